"""After a run: its report and card, loss plots, comparing runs, generating with the adapter (chat), the stop
check, and merging the adapter into its base model. Reads run directories; never trains."""
