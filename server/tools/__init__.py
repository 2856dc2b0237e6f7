"""Tools the server runs itself: what the tool loop (server/turn/loop.py) can call.

Each source of tools sits behind one small interface (base.py: `ToolSource`). MCP servers are the
first (mcp.py); harmony's built-in browser and python come next, on the same interface.
toolbox.py holds the configured sources and picks a request's; toolset.py is one request's pick,
as the prompt shows it and the loop finds it.
"""
