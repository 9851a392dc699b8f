"""The interchange-intervention engine: decoder blocks, entity positions, hooks, generation."""
