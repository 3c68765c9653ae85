package io.allot.yarn;

import allot.v1.AdminServiceGrpc;
import allot.v1.AllocationServiceGrpc;
import allot.v1.Broker;
import io.grpc.ChannelCredentials;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
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

  /** TLS files: the broker's CA, and this client's certificate and key for mutual TLS (both or neither). */
  public record Tls(Path ca, Path cert, Path key) {}

  /**
   * A client for the broker at {@code address}: {@code host:port} or {@code https://host:port}
   * is reached over TLS with {@code tls}; {@code http://host:port} in plain text.
   */
  public AllotClient(String address, Path tokenFile, long timeoutMs, Tls tls) throws IOException {
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
    if (address.startsWith("http://")) {
      this.channel = ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    } else {
      this.channel = Grpc.newChannelBuilder(target, credentials(address, tls)).build();
    }
  }

  private static ChannelCredentials credentials(String address, Tls tls) throws IOException {
    if (tls == null || tls.ca() == null || !Files.isReadable(tls.ca())) {
      throw new IOException("the allot broker " + address + " is reached over TLS, but its CA "
          + (tls == null || tls.ca() == null ? "is not set" : tls.ca() + " cannot be read")
          + ": set " + AllotSettings.TLS_CA + " to ca.pem from the broker's --pki directory, or write http://"
          + address + " for a broker serving plain text");
    }
    if ((tls.cert() == null) != (tls.key() == null)) {
      throw new IOException("set both " + AllotSettings.TLS_CERT + " and " + AllotSettings.TLS_KEY
          + " (a certificate and its key), or neither");
    }
    try {
      TlsChannelCredentials.Builder builder = TlsChannelCredentials.newBuilder().trustManager(tls.ca().toFile());
      if (tls.cert() != null) {
        builder.keyManager(tls.cert().toFile(), tls.key().toFile());
      }
      return builder.build();
    } catch (IOException | RuntimeException e) {
      throw new IOException("cannot use the TLS files for the allot broker (" + tls + "): " + e.getMessage(), e);
    }
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
