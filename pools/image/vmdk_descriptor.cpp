// Descriptor parsing (VMware "Virtual Disk Format 5.0", "The Descriptor File").
#include "vmdk_descriptor.hpp"

#include <fmt/format.h>

#include <charconv>

namespace blockmig::pools::image::vmdk {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

std::string_view unquote(std::string_view s) {
    if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
    return s;
}

template <typename T>
bool parse_number(std::string_view s, T& out, int base = 10) {
    if (s.empty()) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
    return ec == std::errc{} && p == s.data() + s.size();
}

// Splits an extent line into words; a quoted file name may hold spaces.
bool split_words(std::string_view s, std::vector<std::string>& words) {
    while (true) {
        s = trim(s);
        if (s.empty()) return true;
        if (s.front() == '"') {
            auto end = s.find('"', 1);
            if (end == std::string_view::npos) return false;
            words.emplace_back(s.substr(1, end - 1));
            s.remove_prefix(end + 1);
            if (!s.empty() && s.front() != ' ' && s.front() != '\t') return false;
        } else {
            auto end = s.find_first_of(" \t");
            words.emplace_back(s.substr(0, end));
            if (end == std::string_view::npos) return true;
            s.remove_prefix(end);
        }
    }
}

}  // namespace

bool is_device_create_type(std::string_view t) {
    return t == "fullDevice" || t == "partitionedDevice" || t == "vmfsRDM" || t == "vmfsRDMP" ||
           t == "vmfsRaw" || t == "vmfsRawDeviceMap" || t == "vmfsPassthroughRawDeviceMap";
}

Result<Descriptor> parse_descriptor(std::string_view text, const std::string& where) {
    if (auto nul = text.find('\0'); nul != std::string_view::npos) text = text.substr(0, nul);
    Descriptor d;
    bool have_cid = false;
    int lineno = 0;
    auto bad = [&](std::string_view field, std::string_view what) {
        return fail(ErrorCode::protocol, fmt::format("vmdk: {}: descriptor line {}: {}: {}", where,
                                                     lineno, field, what));
    };
    while (!text.empty()) {
        ++lineno;
        auto nl = text.find('\n');
        std::string_view line = trim(text.substr(0, nl));
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (line.empty() || line.front() == '#') continue;
        if (line.starts_with("RW ") || line.starts_with("RDONLY ") ||
            line.starts_with("NOACCESS ") || line.starts_with("RW\t")) {
            std::vector<std::string> w;
            if (!split_words(line, w)) return bad("extent", "unbalanced quotes");
            if (w.size() < 3) return bad("extent", "expected ACCESS SIZE TYPE \"FILE\" [OFFSET]");
            ExtentLine e;
            e.line = lineno;
            e.access = w[0] == "RW"       ? Access::rw
                       : w[0] == "RDONLY" ? Access::rdonly
                                          : Access::noaccess;
            if (!parse_number(w[1], e.sectors) || e.sectors == 0 ||
                e.sectors > (std::uint64_t{1} << 47))
                return bad("extent size", fmt::format("'{}' is not a sector count", w[1]));
            e.type = w[2];
            if (e.type == "ZERO") {
                if (w.size() > 3) return bad("extent", "a ZERO extent has no file");
            } else {
                if (w.size() < 4 || w[3].empty())
                    return bad("extent", fmt::format("{} extent without a file", e.type));
                e.file = w[3];
                if (w.size() > 5) return bad("extent", "trailing words");
                if (w.size() == 5 && !parse_number(w[4], e.offset))
                    return bad("extent offset", fmt::format("'{}' is not a sector number", w[4]));
            }
            d.extents.push_back(std::move(e));
            continue;
        }
        auto eq = line.find('=');
        if (eq == std::string_view::npos)
            return bad("syntax",
                       fmt::format("'{}' is neither key=value nor an extent", line.substr(0, 60)));
        std::string_view key = trim(line.substr(0, eq));
        std::string_view value = unquote(trim(line.substr(eq + 1)));
        if (key.empty()) return bad("syntax", "empty key");
        if (key == "CID") {
            if (!parse_number(value, d.cid, 16))
                return bad("CID", fmt::format("'{}' is not hex", value));
            have_cid = true;
        } else if (key == "parentCID") {
            if (!parse_number(value, d.parent_cid, 16))
                return bad("parentCID", fmt::format("'{}' is not hex", value));
        } else if (key == "createType") {
            d.create_type = value;
        } else if (key == "parentFileNameHint") {
            d.parent_hint = value;
        } else if (key.starts_with("ddb.")) {
            d.ddb[std::string(key.substr(4))] = value;
        }
    }
    lineno = 0;
    if (d.create_type.empty()) return bad("createType", "missing");
    if (!have_cid && d.parent_cid != 0xffffffff) return bad("CID", "missing");
    return d;
}

}  // namespace blockmig::pools::image::vmdk
