"""What runs on the fixture controller: the station service and its parts."""
