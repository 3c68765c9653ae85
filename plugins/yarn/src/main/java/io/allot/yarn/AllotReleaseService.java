package io.allot.yarn;

import allot.v1.Broker;
import io.grpc.StatusRuntimeException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.yarn.server.api.ApplicationInitializationContext;
import org.apache.hadoop.yarn.server.api.ApplicationTerminationContext;
import org.apache.hadoop.yarn.server.api.AuxiliaryService;
import org.apache.hadoop.yarn.server.api.ContainerTerminationContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Releases a container's Allot allocations when it ends, whatever its runtime:
 * the NodeManager calls a device plugin's onDevicesReleased for Docker containers
 * only, but every auxiliary service hears of every container's end. Configure it
 * as the aux service {@code allot} (yarn.nodemanager.aux-services).
 */
public class AllotReleaseService extends AuxiliaryService {
  private static final Logger LOG = LoggerFactory.getLogger(AllotReleaseService.class);

  private AllotClient client;
  private String nodeName;

  public AllotReleaseService() {
    super("allot");
  }

  @Override
  protected void serviceInit(Configuration conf) throws Exception {
    String broker = conf.getTrimmed(AllotSettings.BROKER);
    if (broker == null || broker.isEmpty()) {
      throw new IllegalArgumentException(AllotSettings.BROKER + " is not set: give the allot broker's gRPC address");
    }
    nodeName = conf.getTrimmed(AllotSettings.NODE_NAME, java.net.InetAddress.getLocalHost().getHostName());
    client = new AllotClient(broker, Path.of(conf.getTrimmed(AllotSettings.TOKEN_FILE,
        AllotSettings.DEFAULT_TOKEN_FILE)), conf.getLong(AllotSettings.TIMEOUT_MS, 10_000), AllotSettings.tls(conf));
    super.serviceInit(conf);
  }

  @Override
  protected void serviceStop() throws Exception {
    if (client != null) {
      client.close();
    }
    super.serviceStop();
  }

  @Override
  public void initializeApplication(ApplicationInitializationContext context) {}

  @Override
  public void stopApplication(ApplicationTerminationContext context) {}

  @Override
  public ByteBuffer getMetaData() {
    return ByteBuffer.allocate(0);
  }

  /** Releases every live allocation on this node whose owner is the container. */
  @Override
  public void stopContainer(ContainerTerminationContext context) {
    String owner = context.getContainerId().toString();
    try {
      for (Broker.Allocation allocation : client.list(nodeName, owner)) {
        if (allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_BOUND
            || allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_ENFORCED
            || allocation.getState() == Broker.AllocationState.ALLOCATION_STATE_PENDING) {
          client.release(allocation.getId());
          LOG.info("released allocation {} of {}", allocation.getId(), owner);
        }
      }
    } catch (StatusRuntimeException e) {
      // The next allocation on this node releases it (AllotDevicePlugin.releaseStale).
      LOG.warn("cannot release the allocations of {}: {}", owner, AllotClient.describe(e));
    }
  }
}
