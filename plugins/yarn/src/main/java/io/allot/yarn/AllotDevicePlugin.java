package io.allot.yarn;

import allot.v1.Broker;
import allot.v1.Inventory;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.net.InetAddress;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Collectors;
import org.apache.hadoop.conf.Configurable;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.Device;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.DevicePlugin;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.DevicePluginScheduler;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.DeviceRegisterRequest;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.DeviceRuntimeSpec;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.MountDeviceSpec;
import org.apache.hadoop.yarn.server.nodemanager.api.deviceplugin.YarnRuntimeType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Allot's device plugin for the NodeManager's pluggable device framework: the
 * node's healthy GPUs come from the broker's view of this node (as allot-node
 * registered them), and each container's GPUs are chosen by the broker, under
 * its team's quota, through an allocation pinned to this node and to the
 * devices the NodeManager still has free.
 *
 * <p>Every interface method is declared here, not inherited: the NodeManager's
 * compatibility check reads the class's declared methods.
 */
public class AllotDevicePlugin implements DevicePlugin, DevicePluginScheduler, Configurable {
  private static final Logger LOG = LoggerFactory.getLogger(AllotDevicePlugin.class);

  public static final String VERSION = "0.1.0";
  public static final String DEFAULT_RESOURCE = "allot.io/gpu";
  /** NVIDIA's character devices: /dev/nvidiaN has major 195, minor N. */
  public static final int NVIDIA_MAJOR = 195;
  /** What the owner of an allocation made by this plugin starts with when no container id is known. */
  public static final String OWNER_PREFIX = "yarn:";

  private Configuration conf;
  private AllotClient client;
  private String nodeName;
  private TeamMapping mapping;
  /** GPU index to UUID, from the last inventory read. */
  private final Map<Integer, String> uuids = new TreeMap<>();

  public AllotDevicePlugin() {}

  @Override
  public void setConf(Configuration conf) {
    this.conf = conf;
  }

  @Override
  public Configuration getConf() {
    return conf;
  }

  private synchronized AllotClient client() throws IOException {
    if (client == null) {
      Configuration c = conf == null ? new Configuration(false) : conf;
      String broker = c.getTrimmed(AllotSettings.BROKER);
      if (broker == null || broker.isEmpty()) {
        throw new IOException(AllotSettings.BROKER
            + " is not set: give the allot broker's gRPC address (host:port) in yarn-site.xml");
      }
      nodeName = c.getTrimmed(AllotSettings.NODE_NAME, InetAddress.getLocalHost().getHostName());
      mapping = new TeamMapping(c.get(AllotSettings.TEAM_MAPPING, ""),
          c.getBoolean(AllotSettings.QUEUE_LEAF_IS_TEAM, true),
          c.getBoolean(AllotSettings.ALLOW_TEAM_ENV, false));
      client = new AllotClient(broker, Path.of(c.getTrimmed(AllotSettings.TOKEN_FILE,
          AllotSettings.DEFAULT_TOKEN_FILE)), c.getLong(AllotSettings.TIMEOUT_MS, 10_000), AllotSettings.tls(c));
    }
    return client;
  }

  private String resourceName() {
    return conf == null ? DEFAULT_RESOURCE : conf.getTrimmed(AllotSettings.RESOURCE_NAME, DEFAULT_RESOURCE);
  }

  /** The node as the broker knows it, or an exception that says what to check. */
  private Inventory.NodeInventory inventory() throws IOException {
    AllotClient c = client();
    Broker.GetNodeResponse node;
    try {
      node = c.getNode(nodeName);
    } catch (StatusRuntimeException e) {
      Status.Code code = e.getStatus().getCode();
      if (code == Status.Code.UNAVAILABLE || code == Status.Code.DEADLINE_EXCEEDED) {
        throw new IOException("E-BROKER-UNREACHABLE: the allot broker at " + c.address()
            + " does not answer (" + AllotClient.describe(e) + "): check that allot-broker runs there and that "
            + AllotSettings.BROKER + " names its gRPC address", e);
      }
      if (code == Status.Code.NOT_FOUND) {
        throw new IOException("E-NODE-UNKNOWN: the allot broker at " + c.address() + " knows no node '"
            + nodeName + "': check that allot-node runs on this host with --name " + nodeName
            + " (or set " + AllotSettings.NODE_NAME + ")", e);
      }
      if (code == Status.Code.UNAUTHENTICATED || code == Status.Code.PERMISSION_DENIED) {
        throw new IOException("E-TOKEN: the allot broker at " + c.address() + " refused the token ("
            + AllotClient.describe(e) + "): check " + AllotSettings.TOKEN_FILE
            + " holds the node token", e);
      }
      throw new IOException("the allot broker at " + c.address() + " failed GetNode: "
          + AllotClient.describe(e), e);
    }
    if (node.getStatus() == Broker.NodeStatus.NODE_STATUS_LOST) {
      LOG.warn("allot node {} is marked lost at the broker: is allot-node running?", nodeName);
    }
    synchronized (uuids) {
      uuids.clear();
      for (Inventory.Gpu gpu : node.getInventory().getGpusList()) {
        if (gpu.hasUuid()) {
          uuids.put(gpu.getIndex(), gpu.getUuid());
        }
      }
    }
    return node.getInventory();
  }

  @Override
  public DeviceRegisterRequest getRegisterRequestInfo() throws Exception {
    // Fails registration (and so the NodeManager's start) with the reason when
    // the broker or this node is not there, instead of a NodeManager with no GPUs.
    inventory();
    return DeviceRegisterRequest.Builder.newInstance()
        .setResourceName(resourceName())
        .setPluginVersion(VERSION)
        .build();
  }

  @Override
  public Set<Device> getDevices() throws Exception {
    Set<Device> devices = new TreeSet<>();
    for (Inventory.Gpu gpu : inventory().getGpusList()) {
      if (gpu.getHealth().getState() != Inventory.HealthState.HEALTH_STATE_HEALTHY) {
        LOG.warn("GPU {} ({}) is not offered to YARN: {} {}", gpu.getIndex(), gpu.getPciBusId(),
            gpu.getHealth().getState(), gpu.getHealth().getReasonsList());
        continue;
      }
      if (!gpu.hasUuid()) {
        LOG.warn("GPU {} ({}) has no UUID and is not offered to YARN", gpu.getIndex(), gpu.getPciBusId());
        continue;
      }
      devices.add(device(gpu.getIndex(), gpu.getPciBusId()));
    }
    return devices;
  }

  /** The device the NodeManager records for a GPU: the same on every start, so recovery finds it. */
  public static Device device(int index, String busId) {
    return Device.Builder.newInstance()
        .setId(index)
        .setDevPath("/dev/nvidia" + index)
        .setMajorNumber(NVIDIA_MAJOR)
        .setMinorNumber(index)
        .setBusID(busId)
        .setHealthy(true)
        .build();
  }

  @Override
  public Set<Device> allocateDevices(Set<Device> available, int count, Map<String, String> env) {
    String owner = env.getOrDefault("CONTAINER_ID", "");
    try {
      client();
      String team = mapping.teamFor(env)
          .orElseThrow(() -> new AllotAllocationException(TeamMapping.unmapped(env)));
      Map<Integer, Device> byIndex = new HashMap<>();
      for (Device device : available) {
        byIndex.put(device.getId(), device);
      }
      releaseStale(byIndex);
      Broker.Pin.Builder pin = Broker.Pin.newBuilder().setNode(nodeName);
      for (Device device : available) {
        pin.addDevices(Broker.DeviceSelector.newBuilder().setGpuUuid(uuidOf(device.getId())));
      }
      Broker.AllocationSpec.Builder spec = Broker.AllocationSpec.newBuilder()
          .setTeam(team)
          .setWhole(Broker.WholeGpus.newBuilder().setCount(count))
          .setInterconnect(Broker.Interconnect.INTERCONNECT_ANY)
          .setPin(pin)
          .setOwner(owner.isEmpty() ? OWNER_PREFIX + nodeName : owner);
      Broker.CreateAllocationResponse created;
      try {
        created = client.create(Broker.CreateAllocationRequest.newBuilder()
            .setSpec(spec).setNoWait(true).build());
      } catch (StatusRuntimeException e) {
        throw new AllotAllocationException("allot broker refused " + count + " GPU(s) for team " + team
            + (owner.isEmpty() ? "" : " (" + owner + ")") + ": " + AllotClient.describe(e)
            + "; nothing was granted", e);
      }
      Set<Device> chosen = new TreeSet<>();
      for (Broker.GpuGrant grant : created.getBinding().getGpusList()) {
        Device device = byIndex.get(grant.getIndex());
        if (device == null) {
          releaseQuietly(created.getAllocation().getId());
          throw new AllotAllocationException("allot broker granted GPU " + grant.getIndex()
              + " which the NodeManager did not offer; released " + created.getAllocation().getId());
        }
        chosen.add(device);
      }
      if (chosen.size() != count) {
        releaseQuietly(created.getAllocation().getId());
        throw new AllotAllocationException("allot broker granted " + chosen.size() + " GPU(s), asked "
            + count + "; released " + created.getAllocation().getId());
      }
      LOG.info("allocation {} for {} (team {}): GPUs {}", created.getAllocation().getId(), owner, team,
          chosen.stream().map(Device::getId).collect(Collectors.toList()));
      return chosen;
    } catch (IOException e) {
      throw new AllotAllocationException(e.getMessage(), e);
    }
  }

  private String uuidOf(int index) throws IOException {
    synchronized (uuids) {
      if (uuids.containsKey(index)) {
        return uuids.get(index);
      }
    }
    inventory();
    synchronized (uuids) {
      String uuid = uuids.get(index);
      if (uuid == null) {
        throw new IOException("GPU " + index + " of node " + nodeName + " is unknown to the allot broker");
      }
      return uuid;
    }
  }

  /**
   * Allocations of YARN containers whose GPUs the NodeManager offers as free are
   * left over from containers that ended without a release reaching the broker
   * (the aux service was not configured, or the broker was down then): release them.
   */
  private void releaseStale(Map<Integer, Device> free) {
    List<Broker.Allocation> live;
    try {
      live = client.list(nodeName, "");
    } catch (StatusRuntimeException e) {
      LOG.warn("cannot list allocations of {} to find stale ones: {}", nodeName, AllotClient.describe(e));
      return;
    }
    for (Broker.Allocation allocation : live) {
      String owner = allocation.getSpec().getOwner();
      boolean ours = owner.startsWith("container_") || owner.startsWith(OWNER_PREFIX);
      boolean allFree = allocation.getBinding().getGpusCount() > 0 && allocation.getBinding().getGpusList()
          .stream().allMatch(gpu -> free.containsKey(gpu.getIndex()));
      boolean live1 = allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_BOUND
          || allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_ENFORCED;
      if (ours && allFree && live1) {
        LOG.info("releasing stale allocation {} of {}: the NodeManager holds none of its GPUs",
            allocation.getId(), owner);
        releaseQuietly(allocation.getId());
      }
    }
  }

  private void releaseQuietly(String id) {
    try {
      client.release(id);
    } catch (StatusRuntimeException e) {
      LOG.warn("cannot release allocation {}: {}", id, AllotClient.describe(e));
    }
  }

  @Override
  public DeviceRuntimeSpec onDevicesAllocated(Set<Device> allocated, YarnRuntimeType runtime)
      throws Exception {
    if (runtime != YarnRuntimeType.RUNTIME_DOCKER || allocated == null || allocated.isEmpty()) {
      // The default runtime isolates with the devices cgroup and ignores a spec.
      return null;
    }
    List<String> ids = new ArrayList<>();
    for (Device device : allocated) {
      ids.add(uuidOf(device.getId()));
    }
    String visible = String.join(",", ids);
    DeviceRuntimeSpec.Builder spec = DeviceRuntimeSpec.Builder.newInstance()
        .setContainerRuntime(conf == null ? "nvidia" : conf.get(AllotSettings.DOCKER_RUNTIME, "nvidia"))
        .addEnv("NVIDIA_VISIBLE_DEVICES", visible)
        .addEnv("CUDA_VISIBLE_DEVICES", visible);
    for (String control : List.of("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")) {
      spec.addMountDeviceSpec(MountDeviceSpec.Builder.newInstance()
          .setDevicePathInHost(control).setDevicePathInContainer(control)
          .setDevicePermission(MountDeviceSpec.RW).build());
    }
    for (Device device : allocated) {
      spec.addMountDeviceSpec(MountDeviceSpec.Builder.newInstance()
          .setDevicePathInHost(device.getDevPath()).setDevicePathInContainer(device.getDevPath())
          .setDevicePermission(MountDeviceSpec.RW).build());
    }
    return spec.build();
  }

  @Override
  public void onDevicesReleased(Set<Device> released) throws Exception {
    AllotClient c = client();
    Set<Integer> gone = released.stream().map(Device::getId).collect(Collectors.toSet());
    for (Broker.Allocation allocation : c.list(nodeName, "")) {
      boolean live = allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_BOUND
          || allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_ENFORCED;
      boolean held = allocation.getBinding().getGpusCount() > 0 && allocation.getBinding().getGpusList()
          .stream().allMatch(gpu -> gone.contains(gpu.getIndex()));
      if (live && held) {
        c.release(allocation.getId());
        LOG.info("released allocation {} of {}", allocation.getId(), allocation.getSpec().getOwner());
      }
    }
  }
}
