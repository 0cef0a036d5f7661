"""UDA methods (one file each) and the blocks they share."""
