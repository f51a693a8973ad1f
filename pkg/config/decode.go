package config

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Raw is the configuration as written: strings where the file has durations,
// addresses and enums, pointers where "absent" differs from zero. Flags and the
// file both produce a Raw; Normalize turns it into a Config.
type Raw struct {
	Admin        *RawAdmin           `yaml:"admin,omitempty"`
	Zones        map[string][]string `yaml:"zones,omitempty"`
	LoadBalancer RawLoadBalancer     `yaml:"load_balancer,omitempty"`
	Listeners    []RawListener       `yaml:"listeners,omitempty"`
	TargetGroups []RawTargetGroup    `yaml:"target_groups,omitempty"`
	BGP          *RawBGP             `yaml:"bgp,omitempty"`
	Registry     *RawRegistry        `yaml:"registry,omitempty"`
}

// RawRegistry is the registry section as written.
type RawRegistry struct {
	Backend   string          `yaml:"backend,omitempty"`
	Endpoints []string        `yaml:"endpoints,omitempty"`
	Prefix    string          `yaml:"prefix,omitempty"`
	TLS       *RawRegistryTLS `yaml:"tls,omitempty"`
}

// RawRegistryTLS is how l4lb reaches etcd over TLS.
type RawRegistryTLS struct {
	CAFile   string `yaml:"ca_file,omitempty"`
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
}

// RawAdmin is the admin section as written.
type RawAdmin struct {
	Listen    *string `yaml:"listen,omitempty"`
	TokenFile string  `yaml:"token_file,omitempty"`
}

// RawLoadBalancer is the load_balancer section as written.
type RawLoadBalancer struct {
	CrossZone       *bool  `yaml:"cross_zone,omitempty"`
	ShutdownTimeout string `yaml:"shutdown_timeout,omitempty"`
	MaxFlows        *int   `yaml:"max_flows,omitempty"`
	EndpointID      string `yaml:"endpoint_id,omitempty"`
	UDPFastPath     *bool  `yaml:"udp_fast_path,omitempty"`
	// UDPFastPathInterfaces lists the interfaces the fast path runs on.
	UDPFastPathInterfaces []string `yaml:"udp_fast_path_interfaces,omitempty"`
	TCPFastPath           *bool    `yaml:"tcp_fast_path,omitempty"`
	TCPFastPathInterfaces []string `yaml:"tcp_fast_path_interfaces,omitempty"`
	// BPFFS is where the kernel paths pin their links and maps.
	BPFFS *string `yaml:"bpffs,omitempty"`
}

// RawBGP is the bgp section as written: the embedded speaker that
// announces each zone's addresses to the routers.
type RawBGP struct {
	LocalAS       *int                `yaml:"local_as,omitempty"`
	RouterID      string              `yaml:"router_id,omitempty"`
	ListenPort    *int                `yaml:"listen_port,omitempty"`
	Peers         []RawBGPPeer        `yaml:"peers,omitempty"`
	Announce      map[string][]string `yaml:"announce,omitempty"`
	Communities   map[string][]string `yaml:"communities,omitempty"`
	WithdrawGrace string              `yaml:"withdraw_grace,omitempty"`
}

// RawBGPPeer is one BGP neighbour as written.
type RawBGPPeer struct {
	Address      string  `yaml:"address,omitempty"`
	AS           *int    `yaml:"as,omitempty"`
	Port         *int    `yaml:"port,omitempty"`
	HoldTime     string  `yaml:"hold_time,omitempty"`
	LocalAddress string  `yaml:"local_address,omitempty"`
	Password     string  `yaml:"password,omitempty"`
	Multihop     *int    `yaml:"multihop,omitempty"`
	BFD          *RawBFD `yaml:"bfd,omitempty"`
}

// RawBFD is a peer's bfd block as written; its presence turns BFD on.
type RawBFD struct {
	Interval       string      `yaml:"interval,omitempty"`
	Multiplier     *int        `yaml:"multiplier,omitempty"`
	Authentication *RawBFDAuth `yaml:"authentication,omitempty"`
}

// RawBFDAuth is a BFD session's authentication as written.
type RawBFDAuth struct {
	Type     string `yaml:"type,omitempty"`
	KeyID    *int   `yaml:"key_id,omitempty"`
	Password string `yaml:"password,omitempty"`
}

// RawListener is one listener as written.
type RawListener struct {
	Name                    string          `yaml:"name,omitempty"`
	Protocol                string          `yaml:"protocol,omitempty"`
	Port                    *int            `yaml:"port,omitempty"`
	Bind                    []string        `yaml:"bind,omitempty"`
	TargetGroup             string          `yaml:"target_group,omitempty"`
	Forward                 []RawForward    `yaml:"forward,omitempty"`
	Rules                   []RawRule       `yaml:"rules,omitempty"`
	IdleTimeout             string          `yaml:"idle_timeout,omitempty"`
	UDPIdleTimeout          string          `yaml:"udp_idle_timeout,omitempty"`
	Allow                   []string        `yaml:"allow,omitempty"`
	Deny                    []string        `yaml:"deny,omitempty"`
	MaxConnectionsPerSource *int            `yaml:"max_connections_per_source,omitempty"`
	ProxyProtocolAccept     *RawProxyAccept `yaml:"proxy_protocol_accept,omitempty"`
	TLS                     *RawTLS         `yaml:"tls,omitempty"`
	QUIC                    *RawQUIC        `yaml:"quic,omitempty"`
}

// RawQUIC is a QUIC or TCP_QUIC listener's quic section as written: the
// QUIC-LB plaintext layout of its targets' connection IDs.
type RawQUIC struct {
	ConnectionIDLength *int `yaml:"connection_id_length,omitempty"`
}

// RawForward is one weighted target group as written.
type RawForward struct {
	TargetGroup string `yaml:"target_group,omitempty"`
	Weight      *int   `yaml:"weight,omitempty"`
}

// RawRule is one SNI rule as written.
type RawRule struct {
	SNI         []string `yaml:"sni,omitempty"`
	TargetGroup string   `yaml:"target_group,omitempty"`
}

// RawProxyAccept lists the sources trusted to send PROXY headers.
type RawProxyAccept struct {
	From []string `yaml:"from,omitempty"`
}

// RawTLS is a listener's tls section as written.
type RawTLS struct {
	Certificates   []RawCertificate `yaml:"certificates,omitempty"`
	SecurityPolicy string           `yaml:"security_policy,omitempty"`
	ALPNPolicy     string           `yaml:"alpn_policy,omitempty"`
	AccessLog      string           `yaml:"access_log,omitempty"`
	// The handshake's bounds (see ListenerTLS).
	HelloTimeout           string `yaml:"hello_timeout,omitempty"`
	HandshakeTimeout       string `yaml:"handshake_timeout,omitempty"`
	HandshakeQueueTimeout  string `yaml:"handshake_queue_timeout,omitempty"`
	MaxHandshakes          *int   `yaml:"max_handshakes,omitempty"`
	MaxHandshakesPerSource *int   `yaml:"max_handshakes_per_source,omitempty"`
}

// RawCertificate is one certificate pair as written.
type RawCertificate struct {
	Cert string `yaml:"cert,omitempty"`
	Key  string `yaml:"key,omitempty"`
}

// RawTargetGroup is one target group as written.
type RawTargetGroup struct {
	Name        string            `yaml:"name,omitempty"`
	Protocol    string            `yaml:"protocol,omitempty"`
	Port        *int              `yaml:"port,omitempty"`
	Targets     []RawTarget       `yaml:"targets,omitempty"`
	HealthCheck *RawHealthCheck   `yaml:"health_check,omitempty"`
	Attributes  map[string]string `yaml:"attributes,omitempty"`
	TLS         *RawTargetTLS     `yaml:"tls,omitempty"`
	Forwarding  string            `yaml:"forwarding,omitempty"`
	// Encapsulation and GUEPort are dsr's: ipip (the default) or gue, and
	// gue's UDP port.
	Encapsulation string `yaml:"encapsulation,omitempty"`
	GUEPort       *int   `yaml:"gue_port,omitempty"`
}

// RawTargetTLS is a TLS target group's tls section as written.
type RawTargetTLS struct {
	CAFile     string `yaml:"ca_file,omitempty"`
	ServerName string `yaml:"server_name,omitempty"`
}

// RawTarget is one target as written.
type RawTarget struct {
	Address      string `yaml:"address,omitempty"`
	Zone         string `yaml:"zone,omitempty"`
	Weight       *int   `yaml:"weight,omitempty"`
	QUICServerID string `yaml:"quic_server_id,omitempty"`
}

// RawHealthCheck is a health_check section as written.
type RawHealthCheck struct {
	Protocol           string `yaml:"protocol,omitempty"`
	Port               string `yaml:"port,omitempty"`
	Path               string `yaml:"path,omitempty"`
	Interval           string `yaml:"interval,omitempty"`
	Timeout            string `yaml:"timeout,omitempty"`
	HealthyThreshold   *int   `yaml:"healthy_threshold,omitempty"`
	UnhealthyThreshold *int   `yaml:"unhealthy_threshold,omitempty"`
	Matcher            string `yaml:"matcher,omitempty"`
}

// FieldError is one problem with one field.
type FieldError struct {
	Path string
	Msg  string
}

func (e FieldError) Error() string { return e.Path + ": " + e.Msg }

// Errors is every problem found in a configuration, in file order.
type Errors []FieldError

func (e Errors) Error() string { return strings.Join(e.Lines(), "\n") }

// Lines is one "path: problem" line per error.
func (e Errors) Lines() []string {
	lines := make([]string, len(e))
	for i, fe := range e {
		lines[i] = fe.Error()
	}
	return lines
}

func (e *Errors) add(path, format string, args ...any) {
	*e = append(*e, FieldError{Path: clip(path), Msg: clip(fmt.Sprintf(format, args...))})
}

// maxErrText bounds a path or message: an error about a 50 MB value quotes
// its start, not all of it.
const maxErrText = 1024

func clip(s string) string {
	if len(s) <= maxErrText {
		return s
	}
	cut := maxErrText
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes in all)", s[:cut], len(s))
}

// err returns nil for no errors, so callers can return it directly.
func (e Errors) err() error {
	if len(e) == 0 {
		return nil
	}
	return e
}

// DecodeYAML decodes a YAML document into a Raw. Unknown keys and values of the
// wrong kind are reported with their path; the rest of the document is still
// decoded, so one run reports every problem.
func DecodeYAML(data []byte) (*Raw, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, Errors{syntaxError(data, err)}
	}
	raw := &Raw{}
	if len(doc.Content) == 0 {
		return raw, nil
	}
	var errs Errors
	d := &decoder{errs: &errs, budget: maxNodes(len(data))}
	d.decode(doc.Content[0], reflect.ValueOf(raw).Elem(), "")
	return raw, errs.err() // raw holds what decoded, even with errors
}

// syntaxError is a YAML syntax error at its line. yaml.v3 names the line
// where the construct it was reading began (a list that starts on line 1),
// not the line that broke it: the first line at which a prefix of the
// document stops parsing is that one.
func syntaxError(data []byte, err error) FieldError {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		msg = "yaml: " + m[2]
	}
	lines := strings.SplitAfter(string(data), "\n")
	var doc yaml.Node
	lo, hi := 1, len(lines) // the first failing prefix is in [lo, hi]
	if yaml.Unmarshal(data, &doc) == nil {
		return FieldError{Path: "(file)", Msg: msg}
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if yaml.Unmarshal([]byte(strings.Join(lines[:mid], "")), &doc) != nil {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	text := strings.TrimRight(lines[lo-1], "\r\n")
	return FieldError{Path: fmt.Sprintf("(file):%d", lo), Msg: fmt.Sprintf("%s (%q)", msg, text)}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// closest is the word of words nearest to w (a typo: at most two edits,
// and fewer than half of w), or "".
func closest(w string, words []string) string {
	best, bestD := "", 3
	for _, c := range words {
		if d := editDistance(w, c); d < bestD && 2*d < len(w) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// maxNodes bounds the values a document of n bytes may decode to. Aliases
// let a few kilobytes name billions of values (a "billion laughs" file);
// yaml.v3 bounds its own decoder likewise. A real config decodes to about
// one value per ten bytes, far below this.
func maxNodes(n int) int { return 100_000 + 10*n }

// decoder walks a document's nodes into a Raw, within a node budget.
type decoder struct {
	errs   *Errors
	budget int
	spent  bool // the budget ran out; the error is reported once
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decode walks n into v by the yaml tags of v's type. It is stricter than
// yaml.v3's own decoder where that one is silent (unknown keys) and names the
// path where yaml.v3 names a line.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	errs := d.errs
	if d.budget--; d.budget < 0 {
		if !d.spent {
			d.spent = true
			errs.add("(file)", "the document expands, through aliases, to more values than any config has; refused")
		}
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	null := n.Kind == yaml.ScalarNode && n.Tag == "!!null"
	if null {
		return
	}
	where := func() string {
		if path == "" {
			return "(file)"
		}
		return path
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			errs.add(where(), "want a mapping, got %s", kindName(n))
			return
		}
		fields := map[string]int{}
		for i := 0; i < v.NumField(); i++ {
			tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
			fields[tag] = i
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			f, ok := fields[key]
			switch {
			case !ok:
				if near := closest(key, sortedKeys(fields)); near != "" {
					errs.add(join(path, key), "unknown key; did you mean %s? (valid: %s)", near, strings.Join(sortedKeys(fields), ", "))
				} else {
					errs.add(join(path, key), "unknown key (valid: %s)", strings.Join(sortedKeys(fields), ", "))
				}
			case seen[key]:
				errs.add(join(path, key), "given twice")
			default:
				seen[key] = true
				d.decode(n.Content[i+1], v.Field(f), join(path, key))
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			errs.add(where(), "want a mapping, got %s", kindName(n))
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if m.MapIndex(reflect.ValueOf(key)).IsValid() {
				errs.add(join(path, key), "given twice")
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(n.Content[i+1], e, join(path, key))
			m.SetMapIndex(reflect.ValueOf(key), e)
		}
		v.Set(m)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			errs.add(where(), "want a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			errs.add(where(), "want a single value, got %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		i, err := strconv.Atoi(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			errs.add(where(), "want a whole number, got %s", describe(n))
			return
		}
		v.SetInt(int64(i))
	case reflect.Bool:
		b, err := parseBool(n.Value)
		if n.Kind != yaml.ScalarNode || err != nil {
			errs.add(where(), "want true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	default:
		panic("config: cannot decode into " + v.Type().String())
	}
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("%q is not true or false", s)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func describe(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return strconv.Quote(n.Value)
	}
	return kindName(n)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
