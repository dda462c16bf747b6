"""Test helpers shared by the suite: free ports, real servers started on loopback."""
