// Fuzz target: the upgrade handover's frame and payload parsers (the
// session record too), from the bytes of one message as the old or new
// process receives it (the state lines too). Asserted: a
// frame is either refused with handover_error or decodes to a known type
// whose payload is exactly the bytes after the header; nothing else throws.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "apilb/process/handover.hpp"
#include "apilb/process/handover_state.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace apilb::handover;
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    try {
        const frame_view f = decode_frame(bytes);
        if (f.payload.size() + header_bytes != bytes.size()) std::abort();
        try {
            switch (f.type) {
            case frame_type::hello: parse_hello(f.payload); break;
            case frame_type::listener: parse_listener(f.payload); break;
            case frame_type::listeners_end:
            case frame_type::sessions_end:
            case frame_type::sessions_taken:
            case frame_type::state_end:
            case frame_type::ready: parse_number(f.payload, "number"); break;
            case frame_type::session: {
                // A record that parses says the same thing encoded again.
                const apilb::session_record r = parse_session(f.payload);
                if (parse_session(encode_session(r)).bytes_to_backend != r.bytes_to_backend) std::abort();
                break;
            }
            case frame_type::child:  // one state line, with its descriptors
            case frame_type::state: {
                // Lines that parse parse again to as many lines once encoded.
                const auto lines = parse_state(f.payload);
                std::size_t again = 0;
                for (const auto& p : encode_state(lines)) again += parse_state(p).size();
                if (again != lines.size() && lines.size() * 8 < max_state_lines) std::abort();
                break;
            }
            case frame_type::abort: break;
            default: std::abort();
            }
        } catch (const handover_error&) {}
    } catch (const handover_error&) {}
    return 0;
}
