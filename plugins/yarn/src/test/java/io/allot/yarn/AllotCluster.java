package io.allot.yarn;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A real allot-broker (embedded store) and allot-node (a fixture, not enforcing)
 * on loopback, started the way tests/src/lib.rs starts them, plus allotctl.
 */
final class AllotCluster implements AutoCloseable {
  static final ObjectMapper JSON = new ObjectMapper();

  final Path dir;
  final Path workspace;
  final Process broker;
  final Process node;
  /** How clients reach the broker: https://127.0.0.1:PORT (mutual TLS with the broker's own CA). */
  final String grpc;
  /** The broker's PKI directory: ca.pem, admin.pem and admin-key.pem, and what pki issue wrote. */
  final Path pki;
  final Path adminToken;
  final Path nodeToken;
  final Path events;
  final String nodeName;

  AllotCluster(String fixture, String nodeName) throws Exception {
    this.workspace = Path.of(System.getProperty("allot.workspace", "../..")).toAbsolutePath().normalize();
    this.dir = Files.createTempDirectory("allot-yarn-");
    this.nodeName = nodeName;
    this.adminToken = dir.resolve("admin.token");
    this.nodeToken = dir.resolve("node.token");
    Path ready = dir.resolve("broker.ready");
    broker = start("broker", List.of(binary("allot-broker").toString(), "serve",
        "--store", "embedded:" + dir.resolve("store"), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--node-timeout", "5s", "--heartbeat-interval", "200ms",
        "--ready-file", ready.toString(), "--admin-token-file", adminToken.toString(),
        "--node-token-file", nodeToken.toString(), "--pki", dir.resolve("pki").toString()));
    this.pki = dir.resolve("pki");
    String address = null;
    for (int i = 0; i < 600 && address == null; i++) {
      if (Files.exists(ready)) {
        try {
          JsonNode addresses = JSON.readTree(Files.readString(ready));
          address = addresses.path("url").asText(null);
        } catch (IOException partial) {
          // written but not complete yet
        }
      }
      if (address == null) {
        if (!broker.isAlive()) {
          throw new IllegalStateException("allot-broker exited:\n" + log("broker"));
        }
        Thread.sleep(50);
      }
    }
    if (address == null) {
      throw new IllegalStateException("allot-broker did not become ready:\n" + log("broker"));
    }
    grpc = address;
    events = dir.resolve("events.jsonl");
    Files.writeString(events, "");
    // The node daemon proves its name with a node certificate; the NodeManager's
    // plugin has a client certificate of its own and the node token.
    Path nodeCert = issue("--node", nodeName);
    issue("--subject", "yarn-nm");
    ProcessBuilder nodeCommand = new ProcessBuilder(binary("allot-node").toString(), "run", "--broker", grpc,
        "--fixture", fixture, "--name", nodeName, "--heartbeat-interval", "0.2",
        "--ca", pki.resolve("ca.pem").toString(), "--cert", nodeCert + ".pem", "--key", nodeCert + "-key.pem",
        "--no-enforce", "--xid-quiet-period", "600");
    nodeCommand.environment().put("ALLOT_FAKE_NVML_EVENTS", events.toString());
    nodeCommand.environment().put("ALLOT_FAKE_NVML_STATE", dir.resolve("nvml-state.json").toString());
    node = start("node", nodeCommand);
    try (AllotClient admin = new AllotClient(grpc, adminToken, 5000, adminTls())) {
      for (int i = 0; ; i++) {
        try {
          if (admin.getNode(nodeName).getInventory().getGpusCount() > 0) {
            break;
          }
        } catch (io.grpc.StatusRuntimeException notYet) {
          if (i > 600) {
            throw new IllegalStateException("node " + nodeName + " did not register:\n" + log("node"), notYet);
          }
        }
        if (!node.isAlive()) {
          throw new IllegalStateException("allot-node exited:\n" + log("node"));
        }
        Thread.sleep(50);
      }
    }
  }

  /** Signs a certificate with the broker's CA (allot-broker pki issue); returns its prefix. */
  Path issue(String kind, String name) throws Exception {
    Path prefix = pki.resolve("issued").resolve(name.replace(':', '-'));
    Process issue = new ProcessBuilder(binary("allot-broker").toString(), "pki", "issue", "--pki", pki.toString(),
        kind, name, "--out", prefix.toString()).redirectErrorStream(true).start();
    String output = new String(issue.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    if (issue.waitFor() != 0) {
      throw new IllegalStateException("allot-broker pki issue " + kind + " " + name + " failed: " + output);
    }
    return prefix;
  }

  /** The platform admin's TLS files (the broker wrote them on its first start). */
  AllotClient.Tls adminTls() {
    return new AllotClient.Tls(pki.resolve("ca.pem"), pki.resolve("admin.pem"), pki.resolve("admin-key.pem"));
  }

  /** The NodeManager plugin's TLS files. */
  AllotClient.Tls pluginTls() {
    Path prefix = pki.resolve("issued").resolve("yarn-nm");
    return new AllotClient.Tls(pki.resolve("ca.pem"), Path.of(prefix + ".pem"), Path.of(prefix + "-key.pem"));
  }

  /** allotctl arguments that reach this broker as the platform admin, then {@code args}. */
  String[] asAdmin(String... args) {
    List<String> all = new ArrayList<>(List.of("--broker", grpc, "--token-file", adminToken.toString()));
    all.addAll(tlsArgs());
    all.addAll(List.of(args));
    return all.toArray(String[]::new);
  }

  /** allotctl's TLS arguments as the platform admin. */
  List<String> tlsArgs() {
    AllotClient.Tls tls = adminTls();
    return List.of("--ca", tls.ca().toString(), "--cert", tls.cert().toString(), "--key", tls.key().toString());
  }

  Path binary(String name) {
    Path path = workspace.resolve("target/debug").resolve(name);
    if (!Files.isExecutable(path)) {
      throw new IllegalStateException(name + " is not built (looked for " + path
          + "): run `cargo build --workspace` first (scripts/test.sh does)");
    }
    return path;
  }

  private Process start(String name, List<String> command) throws IOException {
    return start(name, new ProcessBuilder(command));
  }

  private Process start(String name, ProcessBuilder command) throws IOException {
    File log = dir.resolve(name + ".log").toFile();
    return command.redirectErrorStream(true).redirectOutput(log).start();
  }

  String log(String name) {
    try {
      return Files.readString(dir.resolve(name + ".log"));
    } catch (IOException e) {
      return "(no log: " + e.getMessage() + ")";
    }
  }

  /** Runs allotctl as the platform admin; returns stdout, failing with stderr when it fails. */
  String allotctl(String... args) throws Exception {
    Result result = allotctlResult(args);
    if (result.code != 0) {
      throw new IllegalStateException("allotctl " + String.join(" ", args) + " failed: " + result.stderr);
    }
    return result.stdout;
  }

  JsonNode allotctlJson(String... args) throws Exception {
    List<String> all = new ArrayList<>(List.of("-o", "json"));
    all.addAll(List.of(args));
    return JSON.readTree(allotctl(all.toArray(new String[0])));
  }

  record Result(int code, String stdout, String stderr) {}

  Result allotctlResult(String... args) throws Exception {
    List<String> command = new ArrayList<>(List.of(binary("allotctl").toString(), "--broker", grpc));
    command.addAll(tlsArgs());
    command.addAll(List.of(args));
    ProcessBuilder builder = new ProcessBuilder(command);
    builder.environment().put("ALLOT_TOKEN_FILE", adminToken.toString());
    builder.environment().remove("ALLOT_TOKEN");
    Path out = Files.createTempFile(dir, "allotctl", ".out");
    Path err = Files.createTempFile(dir, "allotctl", ".err");
    Process process = builder.redirectOutput(out.toFile()).redirectError(err.toFile()).start();
    int code = process.waitFor();
    return new Result(code, Files.readString(out, StandardCharsets.UTF_8), Files.readString(err, StandardCharsets.UTF_8));
  }

  void inject(String line) throws IOException {
    Files.writeString(events, line + "\n", java.nio.file.StandardOpenOption.APPEND);
  }

  @Override
  public void close() {
    node.destroy();
    broker.destroy();
  }
}
