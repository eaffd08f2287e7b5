"""Tools beside the library: they import it, it never imports them."""
