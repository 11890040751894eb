"""The `stepgrid` command line: run the bot, generate offline through the same worker, list models, the Redis fleet."""
