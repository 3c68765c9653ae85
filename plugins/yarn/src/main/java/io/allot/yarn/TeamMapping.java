package io.allot.yarn;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;

/**
 * Which Allot team a container's GPUs count against, from its environment.
 *
 * <p>Rules, from {@code allot.yarn.team-mapping}, comma-separated:
 * {@code queue:<queue>=<team>} (the queue in {@code ALLOT_YARN_QUEUE}, full path
 * or leaf name), {@code user:<user>=<team>} (the NodeManager's {@code USER}),
 * {@code default=<team>}. Order of precedence: {@code ALLOT_TEAM} when
 * {@code allot.yarn.allow-team-env} is true, then the queue, then the user, then
 * the default. A queue without a rule maps to the team of its leaf name when
 * {@code allot.yarn.queue-leaf-is-team} is true (queues exported by
 * {@code allotctl export yarn} are named after teams).
 */
public final class TeamMapping {
  public static final String QUEUE_ENV = "ALLOT_YARN_QUEUE";
  public static final String TEAM_ENV = "ALLOT_TEAM";

  private final Map<String, String> queues = new LinkedHashMap<>();
  private final Map<String, String> users = new LinkedHashMap<>();
  private final String fallback;
  private final boolean queueLeafIsTeam;
  private final boolean allowTeamEnv;

  public TeamMapping(String rules, boolean queueLeafIsTeam, boolean allowTeamEnv) {
    String fallback = null;
    for (String raw : rules == null ? new String[0] : rules.split(",")) {
      String rule = raw.trim();
      if (rule.isEmpty()) {
        continue;
      }
      int eq = rule.lastIndexOf('=');
      if (eq <= 0 || eq == rule.length() - 1) {
        throw new IllegalArgumentException("allot.yarn.team-mapping: rule '" + rule
            + "' is not queue:<queue>=<team>, user:<user>=<team> or default=<team>");
      }
      String key = rule.substring(0, eq).trim();
      String team = rule.substring(eq + 1).trim();
      if (key.startsWith("queue:")) {
        queues.put(key.substring("queue:".length()), team);
      } else if (key.startsWith("user:")) {
        users.put(key.substring("user:".length()), team);
      } else if (key.equals("default")) {
        fallback = team;
      } else {
        throw new IllegalArgumentException("allot.yarn.team-mapping: rule '" + rule
            + "' starts with neither queue:, user: nor default");
      }
    }
    this.fallback = fallback;
    this.queueLeafIsTeam = queueLeafIsTeam;
    this.allowTeamEnv = allowTeamEnv;
  }

  /** The team, or empty with nothing that maps. */
  public Optional<String> teamFor(Map<String, String> env) {
    if (allowTeamEnv && notEmpty(env.get(TEAM_ENV))) {
      return Optional.of(env.get(TEAM_ENV));
    }
    String queue = env.get(QUEUE_ENV);
    if (notEmpty(queue)) {
      String leaf = queue.substring(queue.lastIndexOf('.') + 1);
      if (queues.containsKey(queue)) {
        return Optional.of(queues.get(queue));
      }
      if (queues.containsKey(leaf)) {
        return Optional.of(queues.get(leaf));
      }
      if (queueLeafIsTeam) {
        return Optional.of(leaf);
      }
    }
    String user = env.get("USER");
    if (notEmpty(user) && users.containsKey(user)) {
      return Optional.of(users.get(user));
    }
    return Optional.ofNullable(fallback);
  }

  /** Why nothing mapped, for the container's failure message. */
  public static String unmapped(Map<String, String> env) {
    return "E-NO-TEAM: no Allot team for this container (queue "
        + quoteOrUnset(env.get(QUEUE_ENV)) + ", user " + quoteOrUnset(env.get("USER"))
        + "): add a queue:<queue>=<team> or user:<user>=<team> rule to allot.yarn.team-mapping"
        + " or set " + QUEUE_ENV + " in the container's environment; nothing was granted";
  }

  private static String quoteOrUnset(String value) {
    return notEmpty(value) ? "'" + value + "'" : "unset";
  }

  private static boolean notEmpty(String value) {
    return value != null && !value.isEmpty();
  }
}
