"""Everything knowable before training, pure and fast: model facts from config.json, the Trainer's step math,
the VRAM estimate and verdict, the guides' advice, and the report `tuneterm plan` prints."""
