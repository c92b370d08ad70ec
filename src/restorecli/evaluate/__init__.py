"""`restorecli evaluate`: degrade references (or read LR/HR pairs), restore, measure, report."""
