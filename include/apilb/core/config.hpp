// The configuration model: an immutable, validated value built from one YAML
// file. Nothing outside config_loader.cpp reads YAML; everything else reads
// these structs. Pure core: no Asio, no sockets.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "apilb/core/config_bgp.hpp"

namespace apilb {

using duration = std::chrono::milliseconds;

/// A numeric IP address and a port, as validated text. The data plane turns it
/// into an Asio endpoint; the core only guarantees it parses.
struct socket_address {
    std::string ip;          ///< numeric address without brackets: "192.0.2.1", "::1"
    std::uint16_t port = 0;  ///< 0 only where a field allows it (tests bind port 0)
    bool is_v6 = false;

    /// "192.0.2.1:6443" or "[2001:db8::1]:6443".
    std::string to_string() const;
    /// 0.0.0.0 or ::, "any address": a place to listen, never one to reach.
    bool is_unspecified() const { return ip == "0.0.0.0" || ip == "::"; }
    friend bool operator==(const socket_address&, const socket_address&) = default;
};

enum class balance_policy { round_robin, least_connections, maglev };
/// What a maglev pool hashes to pick a backend for a client.
enum class hash_key { source_address, source_address_port };
enum class relay_mode { splice, copy };
/// What drives a worker's sockets: epoll readiness, or io_uring (`automatic`:
/// io_uring when the start-time probe finds it usable, else epoll).
enum class relay_io { automatic, epoll, io_uring };
enum class log_format { text, json };
/// How backends are actively checked: GET a path over HTTPS, a TCP connect, or not at all.
enum class health_check_type { https, tcp, none };
/// Where new sessions go when no backend of a pool is healthy.
enum class all_unhealthy_policy { try_all, reject };

/// One kube-apiserver behind a pool.
struct backend_config {
    std::string name;
    socket_address address;
    std::uint32_t weight = 1;  ///< 1..256; relative share for round-robin and least-connections
    /// Drain by hand: no new sessions go to it; its open sessions continue.
    bool drain = false;
    /// Added by pools[].discovery from the API, not written in the file.
    bool discovered = false;
    /// The API lists it as terminating, not ready or not serving: no new
    /// sessions, its open ones continue (like drain).
    bool terminating = false;
    /// Gone from the API's list but still passing its probes: it serves on
    /// until discovery.grace_period is over.
    bool leaving = false;
    friend bool operator==(const backend_config&, const backend_config&) = default;
};

/// TLS of the health probes (not of client sessions, which apilb never terminates).
struct health_tls_config {
    std::string ca_file;                     ///< verifies the apiserver; required unless insecure
    std::string server_name = "kubernetes";  ///< SNI and the name verified; an IP is verified as an IP
    std::string cert_file;                   ///< optional client certificate (with key_file)
    std::string key_file;
    bool insecure_skip_verify = false;  ///< explicit, warned about at load time
    friend bool operator==(const health_tls_config&, const health_tls_config&) = default;
};

/// Active and passive health checking of one pool's backends, and what
/// apilb does with the result.
struct health_config {
    /// `none` when the pool has no health section; `https` is the default
    /// once the section is written (see docs/configuration.md).
    health_check_type type = health_check_type::none;
    std::string path = "/readyz";  ///< request target of https probes, starting with "/"
    duration interval{std::chrono::seconds(2)};
    duration timeout{std::chrono::seconds(1)};  ///< a whole probe: connect, TLS, request, response
    std::uint32_t rise = 2;                     ///< consecutive passes for an unhealthy backend to become healthy
    std::uint32_t fall = 2;                     ///< consecutive failures for a healthy backend to become unhealthy
    std::uint32_t expect_status = 200;
    std::optional<std::string> expect_body;  ///< the body must contain this text
    health_tls_config tls;
    std::string bearer_token_file;  ///< re-read when it changes; the token is never logged
    bool passive = true;            ///< client connects that fail count against a backend
    /// An unhealthy backend's sessions are closed this long after it became
    /// unhealthy; nullopt = never. 0 by default: `fall` already rides out a
    /// blip, and every second here is a second more that the watches on a
    /// frozen apiserver hang (docs/configuration.md, "Closing sessions").
    std::optional<duration> close_sessions_after{std::chrono::seconds(0)};
    duration slow_start{std::chrono::seconds(30)};  ///< ramp of a recovered backend's weight; 0 = none
    all_unhealthy_policy all_unhealthy = all_unhealthy_policy::try_all;
    bool initial_healthy = true;  ///< state of every backend until its first check completes
    friend bool operator==(const health_config&, const health_config&) = default;
};

/// A named set of backends and how to choose among them.
/// Reconnect storm control, per backend of a pool: after a failover thousands
/// of clients reconnect at once (kubernetes/kubernetes#65954); the excess
/// waits inside apilb for its turn instead of reaching an apiserver at once.
struct storm_control_config {
    /// New connections per second to each backend; 0 = no cap.
    std::uint32_t new_per_second = 0;
    /// Connections allowed at once above the steady rate; 0 in the file means
    /// a tenth of a second's worth (at least 1), resolved by the loader.
    std::uint32_t burst = 0;
    /// Connections to each backend being established at once (connecting,
    /// or connected but its first byte, the end of a TLS handshake, not yet
    /// back); 0 = no cap.
    std::uint32_t max_connecting = 0;
    /// Clients that may wait for one backend; beyond that they are closed.
    std::uint32_t queue = 10000;
    /// Longest wait for a turn; a client whose turn is later is closed at once.
    /// client-go's TLS handshake timeout (10 s) includes this wait.
    duration queue_timeout{std::chrono::seconds(5)};
    friend bool operator==(const storm_control_config&, const storm_control_config&) = default;
};

/// Moving long-lived sessions back onto a backend that returns or is added.
struct rebalance_config {
    bool enabled = false;
    /// Sessions closed per second at most, over the whole pool.
    std::uint32_t max_closes_per_second = 10;
    /// A backend with more than (1 + tolerance) times its weighted share of the
    /// pool's sessions is over-loaded; acted on only while some healthy backend
    /// has less than (1 - tolerance) times its share.
    double tolerance = 0.2;
    friend bool operator==(const rebalance_config&, const rebalance_config&) = default;
};

/// Where a pod finds its service account (in_cluster: true).
constexpr const char* in_cluster_token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
constexpr const char* in_cluster_ca_file = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Following the control plane from the cluster itself (docs/configuration.md,
/// "Discovery"): the `kubernetes` EndpointSlices, listed and watched through
/// one of the pool's backends; the pool's static backends are the seed.
struct discovery_config {
    std::string namespace_name = "default";  ///< `namespace` in the file
    std::string service = "kubernetes";      ///< kubernetes.io/service-name of the slices
    /// Client certificate and key or token, and the cluster CA; "" with in_cluster.
    std::string kubeconfig;
    /// The pod's service account: in_cluster_token_file and in_cluster_ca_file.
    bool in_cluster = false;
    /// Verifies the apiserver instead of the kubeconfig's CA; "" = the
    /// kubeconfig's (or the service account's). A CA is always required.
    std::string ca_file;
    /// The name verified in the apiserver's certificate: apilb connects to
    /// backend addresses, not to the kubeconfig's server; kubeadm puts
    /// "kubernetes" in every apiserver certificate.
    std::string server_name = "kubernetes";
    std::string state_file;                          ///< last-known-good set; "" = none kept
    duration state_max_age{std::chrono::hours(24)};  ///< an older state file is not used; the seed is
    duration grace_period{
        std::chrono::minutes(5)};  ///< a backend gone from the list but passing probes stays this long
    duration change_interval{std::chrono::seconds(5)};  ///< applied changes at least this far apart
    /// A watch with no byte (not even a bookmark) for this long is dead.
    duration idle_timeout{std::chrono::seconds(90)};
    friend bool operator==(const discovery_config&, const discovery_config&) = default;
};

struct pool_config {
    std::string name;
    balance_policy balance = balance_policy::least_connections;
    std::vector<backend_config> backends;
    /// Backends tried before the client is closed; 0 in the file means "each
    /// backend once" and is resolved to backends.size() by the loader.
    std::uint32_t connect_attempts = 0;
    /// connect_attempts was 0 in the file: discovery resolves it again when
    /// it changes the backends.
    bool connect_attempts_each = false;
    health_config health;
    /// balance: maglev only. A prime table size (65537 keeps shares within
    /// about 1% of the weights for up to a few hundred backends) and the key.
    std::uint32_t maglev_table_size = 65537;
    hash_key maglev_key = hash_key::source_address;
    storm_control_config storm_control;
    rebalance_config rebalance;
    std::optional<discovery_config> discovery;  ///< nullopt = the static backends only
};

/// What follows from a pool's backends, once they are known (the file's, or
/// discovery's): connect_attempts when it is "each backend once", and a
/// Maglev table at least as large as the pool, prime.
void resolve_backend_defaults(pool_config& pool);

/// An address apilb accepts clients on, and the pool they go to.
struct listener_config {
    std::string name;
    socket_address address;
    std::string pool;  ///< name of a pool in config::pools (validated)
    std::uint32_t backlog = 4096;
};

struct timeouts_config {
    duration connect{std::chrono::seconds(2)};  ///< per backend connect attempt
    /// A session with no byte in either direction for this long is closed.
    /// Watches are long-lived and may be silent for minutes: keep it long.
    /// 0 disables.
    duration idle{std::chrono::hours(1)};
    /// On SIGTERM, how long established sessions may finish before they are closed.
    duration drain{std::chrono::seconds(30)};
    /// On a reload that removes a backend, how long its open sessions may
    /// continue before they are closed. 0 closes them at once.
    duration reload_drain{std::chrono::seconds(30)};
    /// A session whose write to a peer makes no progress for this long (a
    /// client that never reads while data waits for it) is reset. 0 disables.
    duration write_stall{std::chrono::seconds(60)};
    /// An upgrade's session phase: how long a session with bytes in flight
    /// may take to write them out before it stays with the old process.
    duration upgrade_quiesce{std::chrono::seconds(1)};
    friend bool operator==(const timeouts_config&, const timeouts_config&) = default;
};

/// Socket options set on both legs of every session.
struct tcp_config {
    bool nodelay = true;
    bool keepalive = true;
    duration keepalive_idle{std::chrono::seconds(15)};
    duration keepalive_interval{std::chrono::seconds(5)};
    std::uint32_t keepalive_count = 3;
    /// TCP_USER_TIMEOUT: unacknowledged data for this long kills the
    /// connection. 0 leaves the kernel default (~15 minutes).
    duration user_timeout{std::chrono::seconds(30)};
    /// Bytes each socket of a session may hold in the kernel per direction:
    /// its receive buffer (SO_RCVBUF) and the unsent part of its send queue
    /// (TCP_NOTSENT_LOWAT). 0 leaves both to the kernel's autotuning, which
    /// lets one client that never reads pin several MiB.
    std::uint32_t socket_buffer = 256 * 1024;
    friend bool operator==(const tcp_config&, const tcp_config&) = default;
};

struct limits_config {
    std::uint32_t max_connections = 16384;  ///< client sessions across all listeners; 0 = no limit
    std::uint32_t per_backend = 0;          ///< sessions per backend; 0 = no limit
    friend bool operator==(const limits_config&, const limits_config&) = default;
};

struct relay_config {
    relay_mode mode = relay_mode::splice;
    std::uint32_t buffer_size = 64 * 1024;  ///< copy mode: bytes per borrowed buffer
    std::uint32_t pipe_size = 0;            ///< splice mode: F_SETPIPE_SZ, 0 = kernel default
    relay_io io = relay_io::epoll;
    /// Where `io` was written (0 if it was not): a start that cannot have
    /// what it asks for names the line. Not part of the setting (operator==).
    int io_line = 0;
    int io_column = 0;
    friend bool operator==(const relay_config& a, const relay_config& b) {
        return a.mode == b.mode && a.buffer_size == b.buffer_size && a.pipe_size == b.pipe_size && a.io == b.io;
    }
};

struct log_config {
    std::string level = "info";  ///< trace | debug | info | warn | error | critical | off
    log_format format = log_format::text;
    friend bool operator==(const log_config&, const log_config&) = default;
};

/// One virtual IP keepalived moves between the apilb nodes.
struct vrrp_vip {
    std::string ip;             ///< canonical numeric address
    std::uint32_t prefix = 32;  ///< /32 or /128 unless written
    bool is_v6 = false;
};

/// The `vrrp` section: how this node takes part in keepalived's VRRPv3
/// election for the VIPs, and how apilb couples its readiness to it
/// (docs/vip.md). Absent section = no VIP handling at all.
struct vrrp_config {
    std::string interface;                      ///< where VRRP runs and the VIPs are added
    std::uint32_t virtual_router_id = 0;        ///< 1..255, the same on every node of the pair
    std::uint32_t priority = 100;               ///< 1..254; the highest ready node holds the VIPs
    std::string router_id;                      ///< keepalived's router_id; default "apilb-<vrid>-<priority>"
    std::optional<std::string> unicast_src_ip;  ///< this node's address; needs peers
    std::vector<std::string> peers;             ///< unicast peers; empty = multicast
    std::vector<vrrp_vip> vips;
    duration advert_interval{std::chrono::seconds(1)};  ///< multiple of 10 ms (VRRPv3 centiseconds)
    bool preempt = true;
    duration preempt_delay{0};             ///< only with preempt
    std::string state_dir = "/run/apilb";  ///< track file and notify FIFO live here
    bool track_process = true;             ///< keepalived tracks the apilb process itself
    /// On SIGTERM, how long a node holding the VIPs waits for a peer to take
    /// them before it drains its sessions.
    duration handoff_timeout{std::chrono::seconds(2)};
    /// apilb runs keepalived as its child (restarts it with backoff, stops it
    /// on shutdown) instead of keepalived being a service of its own.
    bool manage = false;
    std::string keepalived_path = "/usr/sbin/keepalived";  ///< manage: true only
    /// keepalived's VRRP process runs SCHED_RR at this priority (1..99), so a
    /// busy node cannot delay its adverts into a false failover; 0 = off.
    std::uint32_t realtime_priority = 0;

    std::string track_file() const { return state_dir + "/vrrp-fault"; }
    std::string notify_fifo() const { return state_dir + "/vrrp-notify.fifo"; }
};

/// Which admin requests need a verified client certificate (admin.tls.client_auth).
enum class admin_client_auth {
    changes,  ///< POSTs (drain, enable, reload); GETs are open to any TLS client
    all,      ///< every request: the handshake fails without a certificate
};

/// HTTPS on the admin endpoint (docs/admin.md#tls). The loader has read every
/// file once: the certificate chain and key parse and match, the CA parses.
struct admin_tls_config {
    std::string cert_file;       ///< PEM: the server certificate, then its intermediates
    std::string key_file;        ///< PEM: the certificate's private key
    std::string client_ca_file;  ///< PEM CA bundle for client certificates; "" = none asked
    admin_client_auth client_auth = admin_client_auth::changes;  ///< only with client_ca_file

    bool operator==(const admin_tls_config&) const = default;
};

/// The admin HTTP endpoint (docs/admin.md): health, metrics, status, control.
struct admin_config {
    /// Loopback unless token_file or tls.client_ca_file protects the POSTs.
    socket_address address;
    /// A file holding the bearer token that POST requests must carry
    /// (`Authorization: Bearer <token>`); created (0600) at start if missing.
    /// "" and no tls.client_ca_file: POSTs are refused.
    std::string token_file;
    std::optional<admin_tls_config> tls;  ///< nullopt = plain HTTP
    /// Host names the endpoint answers to beyond IP literals, localhost and
    /// the TLS certificate's names (DNS rebinding guard).
    std::vector<std::string> host_names;
};

/// One problem found in a config file.
struct config_error {
    std::string file;
    int line = 0;          ///< 1-based; 0 when unknown (e.g. the file cannot be read)
    int column = 0;        ///< 1-based
    std::string key_path;  ///< e.g. "pools[0].backends[2].address"
    std::string message;   ///< what was found and what was expected

    /// "file:line:column: key_path: message"
    std::string to_string() const;
};

/// `text` with every control character replaced by '?': what a config
/// error quotes from its input stays one line in any log or terminal.
std::string single_line(std::string text);

/// The whole configuration. Built only by load_config(); immutable after.
struct config {
    std::string source;  ///< file it was loaded from, for messages
    std::vector<listener_config> listeners;
    std::vector<pool_config> pools;
    timeouts_config timeouts;
    tcp_config tcp;
    limits_config limits;
    relay_config relay;
    log_config log;
    std::uint32_t workers = 0;  ///< 0 in the file = one per usable CPU; resolved by the loader
    /// How `workers: 0` was resolved: "2 CPUs in the affinity mask, cgroup
    /// CPU limit 1.5 (/sys/fs/cgroup/cpu.max)"; "" when the file set workers.
    std::string workers_auto;
    std::optional<vrrp_config> vrrp;    ///< the floating VIP; nullopt = none
    std::optional<bgp_config> bgp;      ///< the VIPs announced over BGP; nullopt = none
    std::optional<admin_config> admin;  ///< the admin endpoint; nullopt = none
    /// Things that load but deserve a word (e.g. insecure_skip_verify): the
    /// CLI prints them, `run` logs them at warn. Same shape as errors.
    std::vector<config_error> warnings;

    /// The pool a listener names; the loader guarantees it exists.
    const pool_config& pool(const std::string& name) const;
    /// The pool named `name`, or nullptr.
    const pool_config* find_pool(const std::string& name) const;
};

/// Thrown by load_config() with every problem found, not just the first.
class config_load_error : public std::runtime_error {
public:
    explicit config_load_error(std::vector<config_error> errors);
    const std::vector<config_error>& errors() const noexcept { return errors_; }

private:
    std::vector<config_error> errors_;
};

/// Reads, validates and resolves a config file; throws config_load_error. Unguarded against YAML that yaml-cpp never finishes: the product loads through load_config_guarded (apilb/yaml_guard.hpp).
std::shared_ptr<const config> load_config(const std::string& path);

/// Same, from text; `source_name` is used as the file name in errors.
std::shared_ptr<const config> parse_config(const std::string& yaml_text, const std::string& source_name);

/// Parses "250ms", "2s", "5m", "1h", "1m30s", "0". Returns nullopt if malformed.
std::optional<duration> parse_duration(const std::string& text);

/// Parses "192.0.2.1:6443", "[2001:db8::1]:6443". Returns nullopt if malformed.
std::optional<socket_address> parse_socket_address(const std::string& text);

const char* to_string(balance_policy);
const char* to_string(hash_key);
const char* to_string(relay_mode);
const char* to_string(relay_io);
const char* to_string(health_check_type);
const char* to_string(all_unhealthy_policy);

}  // namespace apilb
