"""Label Studio integration: server management, project setup, brush RLE, pre-label push and annotation sync."""
