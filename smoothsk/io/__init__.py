"""Files and runs: model files, resumable certification runs in the field's TSV format, reports."""
