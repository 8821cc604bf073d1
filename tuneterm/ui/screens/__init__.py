"""The app's screens: start, wizard, help and small dialogs."""
