"""Recipes compose components into the algorithms of SPEC section 3. The library never imports them."""
