package io.allot.yarn;

import allot.v1.AdminServiceGrpc;
import allot.v1.AllocationServiceGrpc;
import allot.v1.Broker;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.MetadataUtils;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The broker's gRPC API as the plugin uses it: one channel, the bearer token from a
 * file, a deadline on every call so that nothing in the NodeManager hangs on the broker.
 */
public final class AllotClient implements AutoCloseable {
  private final String address;
  private final long timeoutMs;
  private final ManagedChannel channel;
  private final Metadata headers = new Metadata();

  public AllotClient(String address, Path tokenFile, long timeoutMs) throws IOException {
    this.address = address;
    this.timeoutMs = timeoutMs;
    String token;
    try {
      token = Files.readString(tokenFile, StandardCharsets.UTF_8).trim();
    } catch (IOException e) {
      throw new IOException("cannot read the allot token file " + tokenFile
          + " (set allot.yarn.token-file to a file holding the node's token): " + e.getMessage(), e);
    }
    if (token.isEmpty()) {
      throw new IOException("the allot token file " + tokenFile + " is empty");
    }
    headers.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
    String target = address.replaceFirst("^https?://", "");
    this.channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
  }

  public String address() {
    return address;
  }

  private AdminServiceGrpc.AdminServiceBlockingStub admin() {
    return AdminServiceGrpc.newBlockingStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
        .withDeadlineAfter(timeoutMs, TimeUnit.MILLISECONDS);
  }

  private AllocationServiceGrpc.AllocationServiceBlockingStub allocations() {
    return AllocationServiceGrpc.newBlockingStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers))
        .withDeadlineAfter(timeoutMs, TimeUnit.MILLISECONDS);
  }

  public Broker.GetNodeResponse getNode(String name) {
    return admin().getNode(Broker.GetNodeRequest.newBuilder().setName(name).build());
  }

  public Broker.CreateAllocationResponse create(Broker.CreateAllocationRequest request) {
    return allocations().create(request);
  }

  public List<Broker.Allocation> list(String node, String owner) {
    return allocations()
        .list(Broker.ListAllocationsRequest.newBuilder().setNode(node).setOwner(owner).build())
        .getAllocationsList();
  }

  public Broker.Allocation release(String id) {
    return allocations().release(Broker.AllocationRef.newBuilder().setId(id).build());
  }

  /** The gRPC status of a failed call as a person reads it: code and the broker's message. */
  public static String describe(StatusRuntimeException e) {
    String description = e.getStatus().getDescription();
    return e.getStatus().getCode() + (description == null ? "" : ": " + description);
  }

  @Override
  public void close() {
    channel.shutdownNow();
  }
}
