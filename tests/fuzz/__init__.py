"""Fuzzing: hostile input through RabbitMQ (hand-written corpus and Hypothesis)."""
