"""The job queues: the contract and its fair base, the local worker pipe, and the Redis backend and agent."""
