"""What a job looks like in Discord: its messages, where its one message lives, its buttons, edit pacing."""
