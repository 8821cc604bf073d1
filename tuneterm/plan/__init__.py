"""Everything knowable before training: step math (and, as it grows, memory and advice). Pure."""
