"""BioVFM workbook library."""
