#!/usr/bin/env bash
# make deb: builds dist/l4lb_VERSION_ARCH.deb from bin/l4lb (a static
# binary: CGO off) with dpkg-deb. It holds the binary, /etc/l4lb/l4lb.yaml
# (a conffile, kept across upgrades), the systemd units (Type=notify, with
# their capabilities), the sysctl file, man pages and shell completions
# generated from the commands, and the copyright and changelog Debian wants.
# Its maintainer scripts start nothing: the admin writes the config first.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo 0.0.0)}
# A Debian version starts with a digit: v0.1.0-3-gabc -> 0.1.0+3+gabc;
# an untagged tree -> 0.0.0+gabc.
if [[ $version =~ ^v[0-9] ]]; then
	debver=${version#v}
else
	debver="0.0.0+g$version"
fi
debver=${debver//-/+}
arch=${ARCH:-$(go env GOARCH)}
bin=${BIN:-bin/l4lb}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/l4lb_${debver}_${arch}"

install -D -m 0755 "$bin" "$root/usr/bin/l4lb"
install -D -m 0644 packaging/deb/l4lb.yaml "$root/etc/l4lb/l4lb.yaml"
mkdir -p "$root/lib/systemd/system" "$root/usr/lib/sysctl.d"
for unit in l4lb.service l4lb-target-agent@.service; do
	sed -e 's#/usr/local/bin/l4lb#/usr/bin/l4lb#g' \
		-e 's#^Documentation=.*#Documentation=man:l4lb-serve(1)#' \
		"deploy/$unit" > "$root/lib/systemd/system/$unit"
	chmod 0644 "$root/lib/systemd/system/$unit"
done
install -m 0644 deploy/99-l4lb.conf "$root/usr/lib/sysctl.d/99-l4lb.conf"

"$bin" gen-docs --dir "$work/docs"
mkdir -p "$root/usr/share/man/man1"
for page in "$work/docs/man1/"*.1; do
	gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m 0644 "$work/docs/completions/l4lb.bash" "$root/usr/share/bash-completion/completions/l4lb"
install -D -m 0644 "$work/docs/completions/_l4lb" "$root/usr/share/zsh/vendor-completions/_l4lb"
install -D -m 0644 "$work/docs/completions/l4lb.fish" "$root/usr/share/fish/vendor_completions.d/l4lb.fish"

doc="$root/usr/share/doc/l4lb"
install -D -m 0644 packaging/deb/copyright "$doc/copyright"
{
	echo "l4lb ($debver) unstable; urgency=medium"
	echo
	echo "  * Built from l4lb $version; see CHANGELOG.md."
	echo
	echo " -- l4lb developers <dev@l4lb.org>  $(date -R -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")"
} | gzip -9n > "$doc/changelog.gz" # a native package: changelog, not changelog.Debian
chmod 0644 "$doc/changelog.gz"
# Go binaries are static by design (no libc to depend on); lintian is told so.
install -D -m 0644 /dev/stdin "$root/usr/share/lintian/overrides/l4lb" <<'OVERRIDES'
l4lb: statically-linked-binary [usr/bin/l4lb]
OVERRIDES

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: l4lb
Version: $debver
Architecture: $arch
Maintainer: l4lb developers <dev@l4lb.org>
Section: net
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/l4lb/l4lb
Description: layer-4 load balancer with NLB's behaviour
 l4lb balances TCP, UDP, TLS and QUIC flows over target groups, with
 AWS NLB's states, attributes and draining: Maglev hashing, health checks,
 PROXY protocol v2 or transparent mode, TLS termination, kernel fast paths
 (tc programs), live reload and binary upgrade, BGP/ECMP scale-out and a
 shared etcd registry.
CONTROL
echo /etc/l4lb/l4lb.yaml > "$root/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"

mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$root" dist/ >/dev/null
echo "dist/l4lb_${debver}_${arch}.deb"
