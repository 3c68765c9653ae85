package io.allot.yarn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.metrics2.lib.DefaultMetricsSystem;
import org.apache.hadoop.yarn.api.records.QueueState;
import org.apache.hadoop.yarn.api.records.Resource;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.resourcemanager.MockNodes;
import org.apache.hadoop.yarn.server.resourcemanager.ResourceManager;
import org.apache.hadoop.yarn.server.resourcemanager.rmnode.RMNode;
import org.apache.hadoop.yarn.server.resourcemanager.scheduler.QueueMetrics;
import org.apache.hadoop.yarn.server.resourcemanager.scheduler.capacity.CSQueue;
import org.apache.hadoop.yarn.server.resourcemanager.scheduler.capacity.CapacityScheduler;
import org.apache.hadoop.yarn.server.resourcemanager.scheduler.event.NodeAddedSchedulerEvent;
import org.apache.hadoop.yarn.util.resource.ResourceUtils;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * What `allotctl export yarn` writes, loaded by a real ResourceManager with the
 * CapacityScheduler (initialised in this JVM, no ports): the queues exist in the
 * team tree's shape and, on a cluster with the GPUs the export was made for, each
 * queue's effective guarantee and maximum in GPUs are the team's.
 */
class CapacitySchedulerExportTest {
  static final String GPU = AllotDevicePlugin.DEFAULT_RESOURCE;
  static final Path WORKSPACE =
      Path.of(System.getProperty("allot.workspace", "../..")).toAbsolutePath().normalize();
  ResourceManager rm;

  @AfterEach
  void stopRm() {
    if (rm != null) {
      rm.stop();
    }
    rm = null;
    QueueMetrics.clearQueueMetrics();
    DefaultMetricsSystem.shutdown();
    ResourceUtils.resetResourceTypes(new Configuration());
  }

  record Run(int code, String stdout, String stderr) {}

  static Run allotctl(String... args) throws Exception {
    Path allotctl = WORKSPACE.resolve("target/debug/allotctl");
    if (!Files.isExecutable(allotctl)) {
      throw new IllegalStateException("allotctl is not built (looked for " + allotctl
          + "): run `cargo build --workspace` first (scripts/test.sh does)");
    }
    List<String> command = new ArrayList<>(List.of(allotctl.toString()));
    command.addAll(List.of(args));
    Path out = Files.createTempFile("allotctl", ".out");
    Path err = Files.createTempFile("allotctl", ".err");
    Process process = new ProcessBuilder(command).redirectOutput(out.toFile()).redirectError(err.toFile()).start();
    int code = process.waitFor();
    return new Run(code, Files.readString(out), Files.readString(err));
  }

  static Path export(String... extra) throws Exception {
    Path out = Files.createTempDirectory("allot-yarn-export-").resolve("yarn");
    List<String> args = new ArrayList<>(List.of("export", "yarn", "--out", out.toString()));
    args.addAll(List.of(extra));
    Run run = allotctl(args.toArray(String[]::new));
    assertEquals(0, run.code(), "allotctl export yarn failed: " + run.stderr());
    return out;
  }

  /**
   * A ResourceManager whose configuration is yarn-site (the exported RM part),
   * resource-types.xml and capacity-scheduler.xml from the export, with one node
   * holding the cluster's resources.
   */
  CapacityScheduler load(Path dir, long gpus) throws Exception {
    YarnConfiguration conf = new YarnConfiguration();
    for (String name : List.of("yarn-site.resourcemanager.xml", "resource-types.xml", "capacity-scheduler.xml")) {
      Configuration part = new Configuration(false);
      part.addResource(new org.apache.hadoop.fs.Path(dir.resolve(name).toUri()));
      for (Map.Entry<String, String> entry : part) {
        conf.set(entry.getKey(), entry.getValue());
      }
    }
    // No preemption monitor thread and no recovery in a unit-sized RM.
    conf.setBoolean(YarnConfiguration.RM_SCHEDULER_ENABLE_MONITORS, false);
    ResourceUtils.resetResourceTypes(conf);
    // Several ResourceManagers in one JVM, one after the other, as Hadoop's own tests run them.
    DefaultMetricsSystem.setMiniClusterMode(true);
    rm = new ResourceManager();
    rm.init(conf);
    CapacityScheduler scheduler = (CapacityScheduler) rm.getResourceScheduler();
    Resource capacity = Resource.newInstance(gpus * 128 * 1024, (int) gpus * 16);
    capacity.setResourceValue(GPU, gpus);
    RMNode node = MockNodes.newNodeInfo(0, capacity, 1, "gpu-node-1");
    scheduler.handle(new NodeAddedSchedulerEvent(node));
    assertEquals(gpus, scheduler.getClusterResource().getResourceValue(GPU), "the cluster's GPUs");
    return scheduler;
  }

  static long effectiveMin(CSQueue queue) {
    return queue.getQueueResourceQuotas().getEffectiveMinResource().getResourceValue(GPU);
  }

  static long effectiveMax(CSQueue queue) {
    return queue.getQueueResourceQuotas().getEffectiveMaxResource().getResourceValue(GPU);
  }

  static Path teamsFile() {
    return WORKSPACE.resolve("docs/examples/teams.toml");
  }

  /** docs/examples/teams.toml: research (8, limit 16) with vision (4, limit 12) and nlp (4); interns (0, limit 2). */
  void checkExampleQueues(CapacityScheduler scheduler) {
    CSQueue research = scheduler.getQueue("root.research");
    CSQueue vision = scheduler.getQueue("root.research.vision");
    CSQueue nlp = scheduler.getQueue("root.research.nlp");
    CSQueue interns = scheduler.getQueue("root.interns");
    for (CSQueue queue : List.of(research, vision, nlp, interns)) {
      assertTrue(queue != null, "every team has a queue");
    }
    assertEquals(List.of("nlp", "vision"),
        research.getChildQueues().stream().map(CSQueue::getQueueShortName).sorted().toList());
    assertEquals(8, effectiveMin(research), "research's guarantee");
    assertEquals(4, effectiveMin(vision), "vision's guarantee");
    assertEquals(4, effectiveMin(nlp), "nlp's guarantee");
    assertEquals(0, effectiveMin(interns), "interns are guaranteed nothing");
    assertEquals(16, effectiveMax(research), "research may use the whole cluster");
    assertEquals(12, effectiveMax(vision), "vision's limit");
    assertEquals(16, effectiveMax(nlp), "nlp has no limit of its own");
    assertEquals(2, effectiveMax(interns), "interns' limit");
  }

  @Test
  void percentagesLoadAndMatchTheGuarantees() throws Exception {
    Path dir = export("--teams-file", teamsFile().toString(), "--cluster-gpus", "16");
    CapacityScheduler scheduler = load(dir, 16);
    checkExampleQueues(scheduler);
    CSQueue unreserved = scheduler.getQueue("root.allot_unreserved");
    assertEquals(QueueState.STOPPED, unreserved.getState(), "the unguaranteed rest runs nothing");
    assertEquals(0.5f, unreserved.getAbsoluteCapacity(), 1e-4, "half the cluster is guaranteed to nobody");
    assertEquals(-1f, ((org.apache.hadoop.yarn.server.resourcemanager.scheduler.capacity.AbstractLeafQueue)
        scheduler.getQueue("root.research.vision")).getUserLimitFactor(), 1e-6, "one user may use the whole queue");
  }

  @Test
  void absoluteResourcesLoadAndMatchTheGuarantees() throws Exception {
    Path dir = export("--teams-file", teamsFile().toString(), "--cluster-gpus", "16",
        "--capacity", "absolute", "--memory-per-gpu", "128", "--vcores-per-gpu", "16");
    String xml = Files.readString(dir.resolve("capacity-scheduler.xml"));
    assertTrue(xml.contains("[memory=524288,vcores=64," + GPU + "=4]"), xml);
    CapacityScheduler scheduler = load(dir, 16);
    checkExampleQueues(scheduler);
    assertEquals(null, scheduler.getQueue("root.allot_unreserved"), "absolute capacities need no filler");
  }

  @Test
  void aQuotaChangeChangesOnlyItsQueue() throws Exception {
    Path before = export("--teams-file", teamsFile().toString(), "--cluster-gpus", "16");
    Path again = export("--teams-file", teamsFile().toString(), "--cluster-gpus", "16");
    for (String name : List.of("capacity-scheduler.xml", "resource-types.xml", "yarn-site.nodemanager.xml",
        "yarn-site.resourcemanager.xml", "README.md")) {
      assertEquals(Files.readString(before.resolve(name)), Files.readString(again.resolve(name)),
          name + " is the same on every run");
    }
    Path changed = Files.createTempFile("teams", ".toml");
    Files.writeString(changed, Files.readString(teamsFile()).replace(
        "limit = { \"gpu/any\" = 12 }", "limit = { \"gpu/any\" = 10 }"));
    Path after = export("--teams-file", changed.toString(), "--cluster-gpus", "16");
    List<String> old = Files.readAllLines(before.resolve("capacity-scheduler.xml"));
    List<String> now = Files.readAllLines(after.resolve("capacity-scheduler.xml"));
    assertEquals(old.size(), now.size(), "the same properties");
    List<String> differ = new ArrayList<>();
    for (int i = 0; i < old.size(); i++) {
      if (!old.get(i).equals(now.get(i))) {
        differ.add(now.get(i).trim());
      }
    }
    // The header names the file; the vision comment and its maximum change.
    assertTrue(differ.contains("<value>62.5</value>"), "vision's maximum is 10 of research's 16: " + differ);
    assertTrue(differ.size() <= 3, "only vision's lines and the header change: " + differ);
    CapacityScheduler scheduler = load(after, 16);
    assertEquals(10, effectiveMax(scheduler.getQueue("root.research.vision")));
  }

  @Test
  void theBrokersTreeExportsAndATreeQueuesCannotExpressIsRefused() throws Exception {
    try (AllotCluster cluster = new AllotCluster("dgx-h100", "export-node")) {
      cluster.allotctl("team", "create", "ml", "--guaranteed", "gpu/any=6");
      cluster.allotctl("team", "create", "speech", "--parent", "ml", "--guaranteed", "gpu/any=2");
      cluster.allotctl("team", "create", "ops");
      Path out = Files.createTempDirectory("allot-yarn-export-").resolve("yarn");
      Run fine = allotctl(cluster.asAdmin("export", "yarn", "--out", out.toString()));
      assertEquals(0, fine.code(), fine.stderr());
      CapacityScheduler scheduler = load(out, 8);
      assertEquals(6, effectiveMin(scheduler.getQueue("root.ml")), "the cluster's 8 GPUs come from the broker");
      assertEquals(2, effectiveMin(scheduler.getQueue("root.ml.speech")));
      assertEquals(0, effectiveMin(scheduler.getQueue("root.ops")));
      String node = Files.readString(out.resolve("yarn-site.nodemanager.xml"));
      assertTrue(node.contains(cluster.grpc), "the NodeManagers' broker address");
      stopRm();

      // The broker refuses a team under one that holds allocations, so the
      // tree YARN cannot express is one whose per-family guarantees add up to
      // more GPUs than the parent's: ml's 6 cover speech's 2 any-GPU and tts's
      // 6 H100 each, but a queue's children cannot be guaranteed 8 of its 6.
      cluster.allotctl("team", "create", "tts", "--parent", "ml", "--guaranteed", "gpu/h100=6");
      Files.writeString(out.resolve("capacity-scheduler.xml"), "kept");
      Run refused = allotctl(cluster.asAdmin("export", "yarn", "--out", out.toString()));
      assertNotEquals(0, refused.code(), "the tree cannot be CapacityScheduler queues");
      assertTrue(refused.stderr().contains("team \"ml\": its teams are guaranteed 8 GPUs together, more than its own 6"),
          refused.stderr());
      assertEquals("kept", Files.readString(out.resolve("capacity-scheduler.xml")), "nothing was written");
    }
  }

  @Test
  void badInputIsNamed() throws Exception {
    Path out = Files.createTempDirectory("allot-yarn-export-").resolve("yarn");
    Run noSize = allotctl("export", "yarn", "--teams-file", teamsFile().toString(), "--out", out.toString());
    assertNotEquals(0, noSize.code());
    assertTrue(noSize.stderr().contains("--cluster-gpus"), noSize.stderr());
    Run small = allotctl("export", "yarn", "--teams-file", teamsFile().toString(), "--cluster-gpus", "4",
        "--out", out.toString());
    assertNotEquals(0, small.code());
    assertTrue(small.stderr().contains("more than the cluster's 4"), small.stderr());
    assertTrue(!new File(out.toString()).exists(), "nothing half-written");
    Path fractional = Files.createTempFile("teams", ".toml");
    Files.writeString(fractional, "[teams.a]\nguaranteed = { \"gpu/any\" = 1.5 }\n", StandardCharsets.UTF_8);
    Run absolute = allotctl("export", "yarn", "--teams-file", fractional.toString(), "--cluster-gpus", "8",
        "--capacity", "absolute", "--memory-per-gpu", "64", "--vcores-per-gpu", "8", "--out", out.toString());
    assertNotEquals(0, absolute.code());
    assertTrue(absolute.stderr().contains("team \"a\" is guaranteed 1.5 GPUs"), absolute.stderr());
  }
}
