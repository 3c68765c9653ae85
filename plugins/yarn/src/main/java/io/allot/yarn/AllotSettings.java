package io.allot.yarn;

/** The plugin's settings in yarn-site.xml (the NodeManager's configuration). */
public final class AllotSettings {
  /** The broker's gRPC address, host:port. Required. */
  public static final String BROKER = "allot.yarn.broker";
  /** This node's name at the broker (allot-node's --name); default the hostname. */
  public static final String NODE_NAME = "allot.yarn.node-name";
  /** A file holding the bearer token (the node token, granted member in the teams it allocates for). */
  public static final String TOKEN_FILE = "allot.yarn.token-file";
  public static final String DEFAULT_TOKEN_FILE = "/etc/allot/yarn.token";
  /** The resource name; must be declared in resource-types.xml. Default allot.io/gpu. */
  public static final String RESOURCE_NAME = "allot.yarn.resource-name";
  /** queue:Q=T, user:U=T and default=T rules (see TeamMapping). */
  public static final String TEAM_MAPPING = "allot.yarn.team-mapping";
  public static final String QUEUE_LEAF_IS_TEAM = "allot.yarn.queue-leaf-is-team";
  public static final String ALLOW_TEAM_ENV = "allot.yarn.allow-team-env";
  /** Deadline of each broker call in milliseconds (default 10000). */
  public static final String TIMEOUT_MS = "allot.yarn.timeout-ms";
  /** The broker's CA (PEM) for TLS: ca.pem in its --pki directory. Required unless the broker address is http://. */
  public static final String TLS_CA = "allot.yarn.tls.ca";
  public static final String DEFAULT_TLS_CA = "/etc/allot/pki/ca.pem";
  /** This NodeManager's client certificate and key (PEM) for mutual TLS (allot-broker pki issue --subject NAME). */
  public static final String TLS_CERT = "allot.yarn.tls.cert";
  public static final String TLS_KEY = "allot.yarn.tls.key";
  /** The Docker runtime named in the spec for Docker containers (default nvidia). */
  public static final String DOCKER_RUNTIME = "allot.yarn.docker-runtime";

  /** The TLS files the settings name (defaults included). */
  public static AllotClient.Tls tls(org.apache.hadoop.conf.Configuration conf) {
    String cert = conf.getTrimmed(TLS_CERT);
    String key = conf.getTrimmed(TLS_KEY);
    return new AllotClient.Tls(java.nio.file.Path.of(conf.getTrimmed(TLS_CA, DEFAULT_TLS_CA)),
        cert == null || cert.isEmpty() ? null : java.nio.file.Path.of(cert),
        key == null || key.isEmpty() ? null : java.nio.file.Path.of(key));
  }

  private AllotSettings() {}
}
