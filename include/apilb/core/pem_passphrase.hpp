// The one passphrase callback apilb gives OpenSSL, for the config loader's
// key check (core) and the admin endpoint's TLS context (I/O). OpenSSL's
// default callback prompts on the terminal; a daemon has no one to ask.
#pragma once

namespace apilb {

/// An OpenSSL pem_password_cb that refuses to give a passphrase, so an
/// encrypted key fails to load at once (the loader rejects such keys; the
/// file may have changed since it looked).
inline int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*user*/) { return -1; }

}  // namespace apilb
