"""Queue mode: cancellations consumed from a Redis stream by a group of replicas."""
