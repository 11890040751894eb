"""One cog per command family; options.py holds what they share."""
