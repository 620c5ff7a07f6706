"""The page at ``/`` (contract §6): the tutorial's forward and backward passes, computed
live by this service's own API. A thin transport: static HTML, ES modules and one
stylesheet; every number on the page comes from an API call the page makes."""
