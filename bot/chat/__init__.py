"""The Discord face: the Bot subclass and one cog per command family."""
