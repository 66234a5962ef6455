# Sourced by the load benchmark scripts: the upstream they all proxy to,
# and the mesh PKI.

# ok_upstream DIR PORT [CONNECTIONS [NOFILE]]: write DIR/nginx.conf, one
# nginx worker answering `200 ok` on 127.0.0.1:PORT over keep-alive
# connections, up to CONNECTIONS of them (default 4096), with its
# descriptor limit raised to NOFILE when given.
ok_upstream() {
  local dir=$1 port=$2 conns=${3:-4096} nofile=""
  [[ -n ${4:-} ]] && nofile="worker_rlimit_nofile $4;"
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<CFG
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/error.log warn;
$nofile
events { worker_connections $conns; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $dir/cb; proxy_temp_path $dir/px; fastcgi_temp_path $dir/fc;
  uwsgi_temp_path $dir/uw; scgi_temp_path $dir/sc;
  server { listen 127.0.0.1:$port; location / { return 200 "ok"; } } }
CFG
}

# mesh_pki DIR: a CA (ca.pem), and the server's and the client's EC P-256
# certificates with SPIFFE URI SANs (spiffe://bench/server, .../client):
# WHO.crt, WHO.key, WHO.p8 (PKCS#8, for strait), WHO.pem (both, for HAProxy).
mesh_pki() {
  local d=$1 who
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$who.bench" \
      -keyout "$d/$who.key" -out "$d/$who.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://bench/%s,DNS:%s.bench\nextendedKeyUsage=serverAuth,clientAuth\n' "$who" "$who" > "$d/$who.ext"
    openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
      -extfile "$d/$who.ext" -out "$d/$who.crt" 2>/dev/null
    openssl pkcs8 -topk8 -nocrypt -in "$d/$who.key" -out "$d/$who.p8"
    cat "$d/$who.crt" "$d/$who.key" > "$d/$who.pem"
  done
}
