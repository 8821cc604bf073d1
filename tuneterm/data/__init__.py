"""The data layer: read dataset files, detect their format, validate them with locations, render them with
the model's chat template and build the labels training uses. Pure: no textual import."""
