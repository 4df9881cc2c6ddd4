"""netns tests."""
