# Sourced by the scripts here: with REDIS_TLS_DIR set (a folder holding
# ca.pem, server.pem and server.key, as the tests' TestPki writes them),
# servers listen with TLS only and verify each other with that CA;
# REDIS_TLS_AUTH_CLIENTS (yes, optional, no; default optional) says
# whether they require a client certificate.
#
#   tls_server_args PORT   # sets server_args: how a server listens on PORT
#   cli ARGS…              # redis-cli on 127.0.0.1, over TLS when set
#   scheme                 # prints redis or rediss
tls_server_args() {
    if [ -n "${REDIS_TLS_DIR:-}" ]; then
        server_args=(--port 0 --tls-port "$1"
            --tls-cert-file "$REDIS_TLS_DIR/server.pem" --tls-key-file "$REDIS_TLS_DIR/server.key"
            --tls-ca-cert-file "$REDIS_TLS_DIR/ca.pem"
            --tls-auth-clients "${REDIS_TLS_AUTH_CLIENTS:-optional}"
            --tls-replication yes --tls-cluster yes)
    else
        server_args=(--port "$1")
    fi
}
cli() {
    if [ -n "${REDIS_TLS_DIR:-}" ]; then
        redis-cli -h 127.0.0.1 --tls --cacert "$REDIS_TLS_DIR/ca.pem" \
            --cert "$REDIS_TLS_DIR/client.pem" --key "$REDIS_TLS_DIR/client.key" "$@"
    else
        redis-cli -h 127.0.0.1 "$@"
    fi
}
scheme() {
    if [ -n "${REDIS_TLS_DIR:-}" ]; then echo rediss; else echo redis; fi
}
