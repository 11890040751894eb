"""The GPU side: the wire protocol, the job queues, the worker process, the engine and model families."""
