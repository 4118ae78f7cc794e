"""The bottom layer every other imports: errors, atomic file writes and the one dtype table."""
