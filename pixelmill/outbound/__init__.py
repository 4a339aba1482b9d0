"""Calls pixelmill makes to other hosts: the URL guard and the one signed webhook sender."""
