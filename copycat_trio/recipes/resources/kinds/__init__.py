"""The built-in resource kinds: each module holds one kind's operations and its state."""
