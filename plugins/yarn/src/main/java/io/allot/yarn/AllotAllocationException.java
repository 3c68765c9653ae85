package io.allot.yarn;

/**
 * A container's GPUs could not be granted (no team maps, the broker refused, the
 * broker is unreachable). {@code DevicePluginScheduler.allocateDevices} declares no
 * checked exception, so the reason travels in this one and fails the container.
 */
public final class AllotAllocationException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public AllotAllocationException(String message) {
    super(message);
  }

  public AllotAllocationException(String message, Throwable cause) {
    super(message, cause);
  }
}
