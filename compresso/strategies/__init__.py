"""Built-in compression strategies (each registered through the ``compresso.strategies`` entry points)."""
