"""The numbers: metric definitions, bootstrap intervals and the explanation metrics, as pure
functions of arrays. Imports only `icdlib.run`."""
