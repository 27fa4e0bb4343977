"""The `sekha` command line and the MCP server: clients of the Sekha services, built on `sekha-client`."""
