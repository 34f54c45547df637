"""Channel client SDK (asyncio)."""
