package io.allot.yarn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.mockito.ArgumentMatchers.anyString;
import static org.mockito.Mockito.mock;
import static org.mockito.Mockito.when;

import allot.v1.Broker;
import allot.v1.Inventory;
import java.io.Serializable;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.stream.Collectors;
import org.apache.hadoop.yarn.api.records.ApplicationAttemptId;
import org.apache.hadoop.yarn.api.records.ApplicationId;
import org.apache.hadoop.yarn.api.records.ContainerId;
import org.apache.hadoop.yarn.api.records.ContainerLaunchContext;
import org.apache.hadoop.yarn.api.records.Resource;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.exceptions.YarnRuntimeException;
import org.apache.hadoop.yarn.server.api.ContainerTerminationContext;
import org.apache.hadoop.yarn.server.nodemanager.NodeManager;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.Device;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.container.Container;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.container.ResourceMappings;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.linux.privileged.PrivilegedOperationExecutor;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.linux.resources.CGroupsHandler;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.resourceplugin.ResourcePluginManager;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.resourceplugin.deviceframework.DeviceMappingManager;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.resourceplugin.deviceframework.DevicePluginAdapter;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.resourceplugin.deviceframework.DeviceResourceHandlerImpl;
import org.apache.hadoop.yarn.server.nodemanager.containermanager.resourceplugin.deviceframework.ShellWrapper;
import org.apache.hadoop.yarn.server.nodemanager.recovery.NMStateStoreService;
import org.apache.hadoop.yarn.util.resource.ResourceUtils;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The plugin driven by the NodeManager's own classes (ResourcePluginManager with
 * the pluggable device framework, DevicePluginAdapter, DeviceMappingManager,
 * DeviceResourceHandlerImpl) against a real broker and allot-node on dgx-h100.
 * Only what touches the host is a test double: the cgroups handler, the
 * privileged executor, the shell that stats /dev/nvidiaN, the state store.
 */
class NodeManagerPluginTest {
  static final String RESOURCE = AllotDevicePlugin.DEFAULT_RESOURCE;
  static final String NODE = "yarn-node";
  static AllotCluster cluster;
  static int nextContainer = 1;

  @BeforeAll
  static void start() throws Exception {
    cluster = new AllotCluster("dgx-h100", NODE);
    cluster.allotctl("team", "create", "research");
    cluster.allotctl("team", "create", "vision", "--parent", "research");
    cluster.allotctl("team", "create", "capped");
    cluster.allotctl("quota", "set", "capped", "--limit", "gpu/any=2");
    // The node daemons' subject may allocate for the teams YARN runs for.
    cluster.allotctl("policy", "grant", "nodes", "member", "--team", "vision");
    cluster.allotctl("policy", "grant", "nodes", "member", "--team", "capped");
  }

  @AfterAll
  static void stop() {
    if (cluster != null) {
      cluster.close();
    }
  }

  /** A NodeManager's configuration for the plugin, as docs/yarn.md writes it. */
  static YarnConfiguration conf(String broker) {
    YarnConfiguration conf = new YarnConfiguration();
    conf.set(YarnConfiguration.RESOURCE_TYPES, RESOURCE);
    ResourceUtils.resetResourceTypes(conf);
    conf.setBoolean(YarnConfiguration.NM_PLUGGABLE_DEVICE_FRAMEWORK_ENABLED, true);
    conf.set(YarnConfiguration.NM_PLUGGABLE_DEVICE_FRAMEWORK_DEVICE_CLASSES, AllotDevicePlugin.class.getName());
    conf.set(AllotSettings.BROKER, broker);
    conf.set(AllotSettings.NODE_NAME, NODE);
    conf.set(AllotSettings.TOKEN_FILE, cluster.nodeToken.toString());
    AllotClient.Tls tls = cluster.pluginTls();
    conf.set(AllotSettings.TLS_CA, tls.ca().toString());
    conf.set(AllotSettings.TLS_CERT, tls.cert().toString());
    conf.set(AllotSettings.TLS_KEY, tls.key().toString());
    conf.set(AllotSettings.TEAM_MAPPING, "user:alice=vision,user:carol=capped");
    conf.setLong(AllotSettings.TIMEOUT_MS, 5000);
    return conf;
  }

  /** One NodeManager: its context, plugin manager and the device handler over the doubles. */
  static final class NodeManagerUnderTest {
    final YarnConfiguration conf;
    final NodeManager.NMContext context = mock(NodeManager.NMContext.class);
    final ConcurrentMap<ContainerId, Container> containers = new ConcurrentHashMap<>();
    final ResourcePluginManager rpm = new ResourcePluginManager();
    DevicePluginAdapter adapter;
    DeviceResourceHandlerImpl handler;
    long nodeCapacity;

    NodeManagerUnderTest(YarnConfiguration conf) {
      this.conf = conf;
      when(context.getConf()).thenReturn(conf);
      when(context.getNMStateStore()).thenReturn(mock(NMStateStoreService.class));
      when(context.getContainers()).thenReturn(containers);
    }

    /** What the NodeManager does at start: load the plugin, count the devices, build the handler. */
    NodeManagerUnderTest start() throws Exception {
      rpm.initialize(context);
      adapter = (DevicePluginAdapter) rpm.getNameToPlugins().get(RESOURCE);
      Resource capacity = Resource.newInstance(8192, 8);
      adapter.getNodeResourceHandlerInstance().updateConfiguredResource(capacity);
      nodeCapacity = capacity.getResourceValue(RESOURCE);
      ShellWrapper shell = mock(ShellWrapper.class);
      when(shell.existFile(anyString())).thenReturn(true);
      when(shell.getDeviceFileType(anyString())).thenReturn("c");
      handler = new DeviceResourceHandlerImpl(RESOURCE, adapter, mapping(), mock(CGroupsHandler.class),
          mock(PrivilegedOperationExecutor.class), context, shell);
      adapter.setDeviceResourceHandler(handler);
      handler.bootstrap(conf);
      assertEquals(nodeCapacity, mapping().getAvailableDevices(RESOURCE));
      return this;
    }

    DeviceMappingManager mapping() {
      return adapter.getDeviceMappingManager();
    }

    Container container(ContainerId id, int gpus, Map<String, String> env) {
      Container c = mock(Container.class);
      when(c.getContainerId()).thenReturn(id);
      Resource resource = Resource.newInstance(1024, 1);
      resource.setResourceValue(RESOURCE, gpus);
      when(c.getResource()).thenReturn(resource);
      ResourceMappings mappings = new ResourceMappings();
      when(c.getResourceMappings()).thenReturn(mappings);
      ContainerLaunchContext launch = mock(ContainerLaunchContext.class);
      Map<String, String> full = new HashMap<>(env);
      full.put("CONTAINER_ID", id.toString());
      when(launch.getEnvironment()).thenReturn(full);
      when(c.getLaunchContext()).thenReturn(launch);
      when(c.getUser()).thenReturn(env.getOrDefault("USER", "nobody"));
      containers.put(id, c);
      return c;
    }

    Set<Device> devicesOf(ContainerId id) {
      return mapping().getAllocatedDevices(RESOURCE, id);
    }
  }

  static ContainerId newContainerId() {
    return ContainerId.newContainerId(
        ApplicationAttemptId.newInstance(ApplicationId.newInstance(1700000000000L, 7), 1), nextContainer++);
  }

  static List<Broker.Allocation> live(String owner) throws Exception {
    try (AllotClient admin = new AllotClient(cluster.grpc, cluster.adminToken, 5000, cluster.adminTls())) {
      return admin.list(NODE, owner).stream()
          .filter(a -> a.getState() == Broker.AllocationState.ALLOCATION_STATE_BOUND
              || a.getState() == Broker.AllocationState.ALLOCATION_STATE_ENFORCED
              || a.getState() == Broker.AllocationState.ALLOCATION_STATE_PENDING)
          .collect(Collectors.toList());
    }
  }

  static Map<Integer, Inventory.Gpu> gpus() throws Exception {
    try (AllotClient admin = new AllotClient(cluster.grpc, cluster.adminToken, 5000, cluster.adminTls())) {
      Map<Integer, Inventory.Gpu> gpus = new HashMap<>();
      for (Inventory.Gpu gpu : admin.getNode(NODE).getInventory().getGpusList()) {
        gpus.put(gpu.getIndex(), gpu);
      }
      return gpus;
    }
  }

  @Test
  void theBrokerTakesThePluginOnlyWithACertificateFromItsCa() throws Exception {
    java.nio.file.Path ca = cluster.pki.resolve("ca.pem");
    // Without the CA the plugin says which setting to give.
    java.io.IOException noCa = assertThrows(java.io.IOException.class,
        () -> new AllotClient(cluster.grpc, cluster.nodeToken, 5000, new AllotClient.Tls(null, null, null)));
    assertTrue(noCa.getMessage().contains(AllotSettings.TLS_CA), noCa.getMessage());
    // With the CA but no client certificate, the broker refuses the connection.
    try (AllotClient anonymous = new AllotClient(cluster.grpc, cluster.nodeToken, 5000,
        new AllotClient.Tls(ca, null, null))) {
      io.grpc.StatusRuntimeException refused =
          assertThrows(io.grpc.StatusRuntimeException.class, () -> anonymous.getNode(NODE));
      assertEquals(io.grpc.Status.Code.UNAVAILABLE, refused.getStatus().getCode(), AllotClient.describe(refused));
    }
    // Plain text to the TLS port fails too.
    try (AllotClient plain = new AllotClient(cluster.grpc.replace("https://", "http://"), cluster.nodeToken, 5000,
        null)) {
      assertThrows(io.grpc.StatusRuntimeException.class, () -> plain.getNode(NODE));
    }
    // The plugin's own certificate gets in.
    try (AllotClient plugin = new AllotClient(cluster.grpc, cluster.nodeToken, 5000, cluster.pluginTls())) {
      assertEquals(8, plugin.getNode(NODE).getInventory().getGpusCount(), "the node's GPUs over mutual TLS");
    }
  }

  @Test
  void the_resource_plugin_manager_registers_the_plugin_with_eight_devices_of_dgx_h100() throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    assertTrue(nm.rpm.getNameToPlugins().containsKey(RESOURCE), "registered as " + RESOURCE);
    assertEquals(8, nm.nodeCapacity, "the node's capacity");
    assertEquals(8, nm.mapping().getAvailableDevices(RESOURCE));
    Map<Integer, Inventory.Gpu> gpus = gpus();
    for (Device device : nm.mapping().getAllAllowedDevices().get(RESOURCE)) {
      assertEquals("/dev/nvidia" + device.getId(), device.getDevPath());
      assertEquals(195, device.getMajorNumber());
      assertEquals(device.getId(), device.getMinorNumber());
      assertEquals(gpus.get(device.getId()).getPciBusId(), device.getBusID());
    }
  }

  @Test
  void two_containers_get_disjoint_nvlink_sets_on_one_numa_node_and_completion_releases_both()
      throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    Map<String, String> env = Map.of("USER", "alice");
    ContainerId id1 = newContainerId();
    ContainerId id2 = newContainerId();
    Container c1 = nm.container(id1, 4, env);
    Container c2 = nm.container(id2, 4, env);
    nm.handler.preStart(c1);
    nm.handler.preStart(c2);
    Set<Device> d1 = nm.devicesOf(id1);
    Set<Device> d2 = nm.devicesOf(id2);
    assertEquals(4, d1.size());
    assertEquals(4, d2.size());
    Set<Device> both = new HashSet<>(d1);
    both.addAll(d2);
    assertEquals(8, both.size(), "disjoint: " + d1 + " and " + d2);
    assertEquals(0, nm.mapping().getAvailableDevices(RESOURCE));

    // As the broker chose: each container's devices are exactly its allocation's binding,
    // on one NUMA node, every pair connected by NVLink.
    Map<Integer, Inventory.Gpu> gpus = gpus();
    for (ContainerId id : List.of(id1, id2)) {
      List<Broker.Allocation> allocations = live(id.toString());
      assertEquals(1, allocations.size(), "one allocation owned by " + id);
      Broker.Allocation allocation = allocations.get(0);
      assertEquals("vision", allocation.getSpec().getTeam());
      Set<Integer> bound = allocation.getBinding().getGpusList().stream()
          .map(Broker.GpuGrant::getIndex).collect(Collectors.toSet());
      Set<Integer> given = nm.devicesOf(id).stream().map(Device::getId).collect(Collectors.toSet());
      assertEquals(bound, given);
      Set<Integer> numa = given.stream().map(i -> gpus.get(i).getNumaNode()).collect(Collectors.toSet());
      assertEquals(1, numa.size(), "one NUMA node for " + given + ": " + numa);
      for (int i : given) {
        Set<String> peers = gpus.get(i).getNvlinksList().stream()
            .map(Inventory.NvLink::getPeerPciBusId).collect(Collectors.toSet());
        assertTrue(!peers.isEmpty(), "GPU " + i + " has NVLink");
      }
    }
    String table = cluster.allotctl("alloc", "list", "--node", NODE);
    assertTrue(table.contains(id1.toString()) && table.contains(id2.toString()), table);

    // A NodeManager restart: a fresh plugin manager recovers both containers' devices.
    NodeManagerUnderTest restarted = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    for (ContainerId id : List.of(id1, id2)) {
      Container recovered = restarted.container(id, 4, env);
      ResourceMappings.AssignedResources assigned = new ResourceMappings.AssignedResources();
      assigned.updateAssignedResources(new ArrayList<Serializable>(nm.devicesOf(id)));
      recovered.getResourceMappings().addAssignedResources(RESOURCE, assigned);
      restarted.handler.reacquireContainer(id);
      assertEquals(nm.devicesOf(id), restarted.devicesOf(id));
    }
    assertEquals(0, restarted.mapping().getAvailableDevices(RESOURCE));

    // Completion, default runtime: the handler frees the devices, the aux service releases.
    AllotReleaseService release = new AllotReleaseService();
    release.init(conf(cluster.grpc));
    release.start();
    try {
      for (ContainerId id : List.of(id1, id2)) {
        restarted.handler.postComplete(id);
        release.stopContainer(new ContainerTerminationContext("alice", id, Resource.newInstance(1024, 1)));
        assertEquals(List.of(), live(id.toString()), "released " + id);
      }
    } finally {
      release.stop();
    }
    assertEquals(8, restarted.mapping().getAvailableDevices(RESOURCE));
  }

  @Test
  void docker_containers_get_the_uuids_and_device_mounts_and_are_released_by_on_devices_released()
      throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    AllotDevicePlugin plugin = (AllotDevicePlugin) nm.adapter.getDevicePlugin();
    ContainerId id = newContainerId();
    Map<String, String> env = new HashMap<>(Map.of("USER", "alice", "CONTAINER_ID", id.toString()));
    Set<Device> chosen = plugin.allocateDevices(nm.mapping().getAllAllowedDevices().get(RESOURCE), 2, env);
    assertEquals(2, chosen.size());
    var spec = plugin.onDevicesAllocated(chosen,
        org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.YarnRuntimeType.RUNTIME_DOCKER);
    Map<Integer, Inventory.Gpu> gpus = gpus();
    String uuids = chosen.stream().map(d -> gpus.get(d.getId()).getUuid()).collect(Collectors.joining(","));
    assertEquals(uuids, spec.getEnvs().get("NVIDIA_VISIBLE_DEVICES"));
    Set<String> mounts = spec.getDeviceMounts().stream().map(m -> m.getDevicePathInHost()).collect(Collectors.toSet());
    for (Device device : chosen) {
      assertTrue(mounts.contains(device.getDevPath()), mounts.toString());
    }
    assertTrue(mounts.contains("/dev/nvidiactl"), mounts.toString());
    assertEquals(1, live(id.toString()).size());
    plugin.onDevicesReleased(chosen);
    assertEquals(List.of(), live(id.toString()));
  }

  @Test
  void a_team_at_its_limit_is_refused_with_the_brokers_reason_and_nothing_is_granted() throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    ContainerId id = newContainerId();
    Container c = nm.container(id, 4, Map.of("USER", "carol"));
    AllotAllocationException refused = assertThrows(AllotAllocationException.class, () -> nm.handler.preStart(c));
    assertTrue(refused.getMessage().contains("capped") && refused.getMessage().contains("RESOURCE_EXHAUSTED"),
        refused.getMessage());
    assertEquals(List.of(), live(id.toString()));
    assertEquals(8, nm.mapping().getAvailableDevices(RESOURCE));
  }

  @Test
  void an_unmapped_user_fails_the_container_with_the_reason_and_nothing_is_granted() throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    ContainerId id = newContainerId();
    Container c = nm.container(id, 1, Map.of("USER", "mallory"));
    AllotAllocationException refused = assertThrows(AllotAllocationException.class, () -> nm.handler.preStart(c));
    assertTrue(refused.getMessage().contains("E-NO-TEAM") && refused.getMessage().contains("'mallory'"),
        refused.getMessage());
    assertEquals(List.of(), live(id.toString()));
  }

  @Test
  void an_unreachable_broker_fails_registration_naming_the_address() throws Exception {
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf("127.0.0.1:1"));
    YarnRuntimeException failed = assertThrows(YarnRuntimeException.class, () -> nm.rpm.initialize(nm.context));
    assertTrue(failed.getMessage().contains("127.0.0.1:1") && failed.getMessage().contains("E-BROKER-UNREACHABLE"),
        failed.getMessage());
  }

  @Test
  void an_unknown_node_name_fails_registration_saying_what_to_check() throws Exception {
    YarnConfiguration conf = conf(cluster.grpc);
    conf.set(AllotSettings.NODE_NAME, "no-such-node");
    NodeManagerUnderTest nm = new NodeManagerUnderTest(conf);
    YarnRuntimeException failed = assertThrows(YarnRuntimeException.class, () -> nm.rpm.initialize(nm.context));
    assertTrue(failed.getMessage().contains("no-such-node") && failed.getMessage().contains("allot-node"),
        failed.getMessage());
  }

  @Test
  void a_gpu_made_unhealthy_by_an_xid_is_not_offered_after_a_node_manager_restart() throws Exception {
    NodeManagerUnderTest before = new NodeManagerUnderTest(conf(cluster.grpc)).start();
    assertEquals(8, before.nodeCapacity);
    try (AllotCluster sick = new AllotCluster("dgx-h100", NODE)) {
      AllotCluster healthy = cluster;
      cluster = sick;
      try {
        sick.inject("{\"gpu\": 2, \"kind\": \"xid\", \"value\": 79}");
        for (int i = 0; gpus().get(2).getHealth().getState() == Inventory.HealthState.HEALTH_STATE_HEALTHY; i++) {
          if (i > 600) {
            throw new AssertionError("GPU 2 never turned unhealthy at the broker:\n" + sick.log("node"));
          }
          Thread.sleep(50);
        }
        NodeManagerUnderTest restarted = new NodeManagerUnderTest(conf(sick.grpc)).start();
        assertEquals(7, restarted.nodeCapacity);
        Set<Integer> offered = restarted.mapping().getAllAllowedDevices().get(RESOURCE).stream()
            .map(Device::getId).collect(Collectors.toSet());
        assertEquals(Set.of(0, 1, 3, 4, 5, 6, 7), offered);
      } finally {
        cluster = healthy;
      }
    }
  }
}
