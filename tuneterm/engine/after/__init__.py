"""After a run: its report and card, loss plots, comparing runs, generating with the adapter (chat), the stop
check, merging the adapter into its base model, exporting it (GGUF with llama.cpp's own tools, checked against the
merged model; an Ollama Modelfile) and pushing it to the Hugging Face Hub. Reads run directories; never trains."""
