package io.allot.yarn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.net.URL;
import java.net.URLClassLoader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.jar.JarFile;
import org.junit.jupiter.api.Test;

/**
 * The packaged jar as a NodeManager gets it: alone beside Hadoop's own jars (no
 * gRPC, protobuf or Guava of ours on the classpath, no target/classes), it loads
 * the plugin class, which registers with a real broker and lists the node's GPUs
 * over gRPC with the protobuf classes relocated inside the jar.
 */
class ShadedJarIT {
  static Path jar() {
    Path jar = Path.of(System.getProperty("allot.shaded.jar", "target/allot-yarn-plugin-0.1.0.jar"));
    assertTrue(Files.isRegularFile(jar), "the shaded jar is missing: run `mvn verify`, not the tests alone: " + jar);
    return jar;
  }

  /** Hadoop's jars from this test's classpath, without what the shaded jar must bring itself. */
  static List<URL> hadoopOnly() throws Exception {
    List<URL> urls = new ArrayList<>();
    for (String entry : System.getProperty("java.class.path").split(File.pathSeparator)) {
      String path = entry.replace('\\', '/');
      boolean ours = path.endsWith("/target/classes") || path.endsWith("/target/test-classes")
          || path.contains("/io/grpc/") || path.contains("/com/google/protobuf/")
          || path.contains("/com/google/guava/guava/") || path.contains("/com/google/code/gson/")
          || path.contains("/org/junit/") || path.contains("/org/mockito/");
      if (!ours) {
        urls.add(Path.of(entry).toUri().toURL());
      }
    }
    return urls;
  }

  @Test
  void theJarCarriesItsDependenciesRelocated() throws Exception {
    try (JarFile file = new JarFile(jar().toFile())) {
      List<String> names = file.stream().map(java.util.zip.ZipEntry::getName).toList();
      assertTrue(names.contains("io/allot/yarn/AllotDevicePlugin.class"));
      assertTrue(names.stream().anyMatch(name -> name.startsWith("io/allot/yarn/shaded/protobuf/")));
      assertTrue(names.stream().anyMatch(name -> name.startsWith("io/grpc/netty/shaded/")));
      assertTrue(names.stream().noneMatch(name -> name.startsWith("com/google/protobuf/")),
          "protobuf would clash with Hadoop's");
      assertTrue(names.stream().noneMatch(name -> name.startsWith("com/google/common/")),
          "Guava would clash with Hadoop's");
      assertTrue(names.stream().noneMatch(name -> name.startsWith("org/apache/hadoop/")),
          "Hadoop comes from the NodeManager");
    }
  }

  @Test
  void thePluginLoadsBesideHadoopAloneAndTalksToTheBroker() throws Exception {
    List<URL> urls = new ArrayList<>();
    urls.add(jar().toUri().toURL());
    urls.addAll(hadoopOnly());
    // The loader stays open: the plugin's gRPC threads outlive this test, as they
    // outlive nothing in a NodeManager.
    URLClassLoader loader = new URLClassLoader(urls.toArray(URL[]::new), ClassLoader.getPlatformClassLoader());
    try (AllotCluster cluster = new AllotCluster("dgx-h100", "shaded-node")) {
      assertThrows(ClassNotFoundException.class, () -> loader.loadClass("com.google.protobuf.Message"),
          "no unrelocated protobuf on this classpath");
      Class<?> configurationClass = loader.loadClass("org.apache.hadoop.conf.Configuration");
      Object conf = configurationClass.getConstructor(boolean.class).newInstance(false);
      var set = configurationClass.getMethod("set", String.class, String.class);
      set.invoke(conf, AllotSettings.BROKER, cluster.grpc);
      set.invoke(conf, AllotSettings.NODE_NAME, cluster.nodeName);
      set.invoke(conf, AllotSettings.TOKEN_FILE, cluster.nodeToken.toString());
      // Mutual TLS through the shaded (relocated) Netty.
      AllotClient.Tls tls = cluster.pluginTls();
      set.invoke(conf, AllotSettings.TLS_CA, tls.ca().toString());
      set.invoke(conf, AllotSettings.TLS_CERT, tls.cert().toString());
      set.invoke(conf, AllotSettings.TLS_KEY, tls.key().toString());
      Class<?> pluginClass = loader.loadClass("io.allot.yarn.AllotDevicePlugin");
      assertEquals(loader, pluginClass.getClassLoader(), "the plugin comes from the shaded jar");
      Object plugin = pluginClass.getConstructor().newInstance();
      pluginClass.getMethod("setConf", configurationClass).invoke(plugin, conf);
      Object request = pluginClass.getMethod("getRegisterRequestInfo").invoke(plugin);
      assertEquals(AllotDevicePlugin.DEFAULT_RESOURCE, request.getClass().getMethod("getResourceName").invoke(request));
      Collection<?> devices = (Collection<?>) pluginClass.getMethod("getDevices").invoke(plugin);
      assertEquals(8, devices.size(), "dgx-h100's GPUs, over gRPC from the jar alone");
    }
  }
}
