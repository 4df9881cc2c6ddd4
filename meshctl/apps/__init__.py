"""Sample applications for the lab: an HTTP echo server (``httpecho``) and a TCP echo (``tcpecho``)."""
