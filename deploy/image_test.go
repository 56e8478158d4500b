//go:build images

// The image and release tests build every binary for two platforms and
// three images: minutes on a cold cache. `make test-deploy` runs them (and
// CI does); `make test` leaves them out.

package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/pkg/testenv"
)

// The binaries `make release` builds and `make images` packs, one image each.
var imageBinaries = []string{"sluice-capture", "sluice-redis-writer", "sluice"}

// imageSource is the default of IMAGE_SOURCE in the Makefile: the images
// must say where their source is without being told.
const imageSource = "https://github.com/sluicehq/sluice"

// Given to the builds, so that the test needs no git and finds them again.
const imageRevision = "0123456789abcdef0123456789abcdef01234567"

var imageMachines = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// TestImageRelease builds the release binaries of both platforms and checks
// that they are static, of the right machine, stamped with the version, free
// of the build machine's paths, and the same bytes when built again.
func TestImageRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binaries")
	}
	imageNeed(t, "make")
	imageNeed(t, "go")
	root := imageRoot(t)
	version := "v0.0.0-release-test-" + imageRandom(t)
	dist := t.TempDir()
	start := time.Now()
	imageMake(t, root, "release", "DIST="+dist, "VERSION="+version, "REVISION="+imageRevision)
	t.Logf("make release: %s", time.Since(start).Round(100*time.Millisecond))

	// Paths that -trimpath keeps out of the binaries.
	gomodcache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	leaks := []string{root, strings.TrimSpace(string(gomodcache))}

	for _, arch := range []string{"amd64", "arm64"} {
		for _, b := range imageBinaries {
			file := filepath.Join(dist, "linux_"+arch, b)
			imageCheckStatic(t, file, imageMachines[arch])
			imageCheckBuildInfo(t, file, arch)
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(version)) {
				t.Errorf("%s: version %s not stamped", file, version)
			}
			for _, p := range leaks {
				if p != "" && bytes.Contains(data, []byte(p)) {
					t.Errorf("%s holds the build machine's path %s", file, p)
				}
			}
			t.Logf("linux_%s/%s: %s", arch, b, imageMB(int64(len(data))))
		}
	}

	if runtime.GOOS == "linux" && imageMachines[runtime.GOARCH] != 0 {
		bin := filepath.Join(dist, "linux_"+runtime.GOARCH, "sluice-capture")
		out, err := exec.Command(bin, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), version) {
			t.Errorf("%s --version: %v, %q; want %s", bin, err, out, version)
		}
	}

	// Reproducible: the same inputs again, into another directory. One
	// platform is enough to catch a stamp of time or place, at half the cost.
	platform := "linux/amd64"
	if imageMachines[runtime.GOARCH] != 0 {
		platform = "linux/" + runtime.GOARCH
	}
	again := t.TempDir()
	start = time.Now()
	imageMake(t, root, "release", "DIST="+again, "PLATFORMS="+platform, "VERSION="+version, "REVISION="+imageRevision)
	t.Logf("make release of %s again: %s", platform, time.Since(start).Round(100*time.Millisecond))
	sub := strings.ReplaceAll(platform, "/", "_")
	for _, b := range imageBinaries {
		first, err := os.ReadFile(filepath.Join(dist, sub, b))
		if err != nil {
			t.Fatal(err)
		}
		second, err := os.ReadFile(filepath.Join(again, sub, b))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, second) {
			// A build ID is hashes of the build's inputs, then of the output:
			// differing inputs mean the sources changed between the builds.
			x, y := imageBuildID(t, filepath.Join(dist, sub, b)), imageBuildID(t, filepath.Join(again, sub, b))
			if path.Dir(x) != path.Dir(y) {
				t.Errorf("%s/%s: the sources changed between the two builds (build IDs %s and %s); run the test again", sub, b, x, y)
			} else {
				t.Errorf("%s/%s differs between two builds of the same inputs: not reproducible", sub, b)
			}
		}
	}
}

// TestImages builds the three images with podman, exports each one's
// filesystem and configuration without running a container, and runs its
// entrypoint with --version in a chroot of that filesystem, as the image's
// user. Under CI, podman and root are required; elsewhere their absence
// skips the test.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds container images")
	}
	imageNeed(t, "make")
	imageNeed(t, "go")
	imageNeed(t, "podman")
	if os.Geteuid() != 0 {
		testenv.Missing(t, "root (to chroot into the images' filesystems and to build with podman)")
	}
	if runtime.GOOS != "linux" || imageMachines[runtime.GOARCH] == 0 {
		t.Skipf("the images are built for this machine's architecture; %s/%s has none", runtime.GOOS, runtime.GOARCH)
	}
	root := imageRoot(t)
	tmp := t.TempDir()
	flags := imagePodmanFlags(t, tmp)

	id := imageRandom(t)
	version := "v0.0.0-image-test-" + id
	prefix := "localhost/sluice-test-" + id + "/"
	var refs []string
	for _, b := range imageBinaries {
		refs = append(refs, prefix+b+":"+version, prefix+b+":latest")
	}
	t.Cleanup(func() {
		args := append(append(append([]string{}, flags...), "rmi", "--ignore"), refs...)
		if out, err := exec.Command("podman", args...).CombinedOutput(); err != nil {
			t.Errorf("podman rmi: %v\n%s", err, out)
		}
	})

	start := time.Now()
	imageMake(t, root, "images", "CONTAINER_TOOL=podman", "CONTAINER_TOOL_FLAGS="+strings.Join(flags, " "),
		"DIST="+filepath.Join(tmp, "dist"), "IMAGE_PLATFORM=linux/"+runtime.GOARCH,
		"IMAGE_PREFIX="+prefix, "VERSION="+version, "REVISION="+imageRevision)
	t.Logf("make images: %s", time.Since(start).Round(100*time.Millisecond))

	for _, b := range imageBinaries {
		t.Run(b, func(t *testing.T) {
			ref := prefix + b + ":" + version
			dir := filepath.Join(tmp, b)
			oci := filepath.Join(dir, "oci")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args := append(append([]string{}, flags...), "save", "--format", "oci-dir", "-o", oci, ref)
			if out, err := exec.Command("podman", args...).CombinedOutput(); err != nil {
				t.Fatalf("podman save %s: %v\n%s", ref, err, out)
			}
			img := imageReadOCI(t, oci)
			imageCheckConfig(t, img.config, b, version)

			rootfs := filepath.Join(dir, "rootfs")
			files, compressed := imageExtract(t, oci, img.manifest, rootfs)
			t.Logf("%s: %s in files, %s compressed (as pushed), %d layers",
				ref, imageMB(files), imageMB(compressed), len(img.manifest.Layers))

			imageCheckFilesystem(t, rootfs, img.config)
			entry := img.config.Config.Entrypoint
			if len(entry) == 0 {
				t.Fatal("the image has no entrypoint")
			}
			imageCheckStatic(t, filepath.Join(rootfs, entry[0]), imageMachines[runtime.GOARCH])
			out := imageRunChroot(t, rootfs, img.config, "--version")
			t.Logf("%s --version: %s", entry[0], strings.TrimSpace(out))
			if !strings.Contains(out, version) || !strings.Contains(out, imageRevision) {
				t.Errorf("%s --version in the image printed %q; want version %s and revision %s", entry[0], out, version, imageRevision)
			}
		})
	}
}

// imagePodmanFlags returns podman's global flags for the test: those of
// CONTAINER_TOOL_FLAGS when set, else none when podman's default storage
// works, else a store of its own under dir on the vfs driver, which needs
// no overlay mounts (refused inside some containers).
func imagePodmanFlags(t *testing.T, dir string) []string {
	t.Helper()
	if env, ok := os.LookupEnv("CONTAINER_TOOL_FLAGS"); ok {
		return strings.Fields(env)
	}
	out, err := exec.Command("podman", "info").CombinedOutput()
	if err == nil {
		return nil
	}
	flags := []string{"--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"), "--storage-driver", "vfs"}
	t.Logf("podman info: %v (%s); using %s", err, bytes.TrimSpace(out), strings.Join(flags, " "))
	return flags
}

type imageDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type imageManifest struct {
	Config imageDescriptor   `json:"config"`
	Layers []imageDescriptor `json:"layers"`
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		User       string            `json:"User"`
		Env        []string          `json:"Env"`
		Entrypoint []string          `json:"Entrypoint"`
		Cmd        []string          `json:"Cmd"`
		WorkingDir string            `json:"WorkingDir"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
}

type imageOCI struct {
	manifest imageManifest
	config   imageConfig
}

// imageReadOCI reads the one image of an OCI image layout.
func imageReadOCI(t *testing.T, dir string) imageOCI {
	t.Helper()
	var index struct {
		Manifests []imageDescriptor `json:"manifests"`
	}
	imageReadJSON(t, filepath.Join(dir, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: %d manifests, want 1", dir, len(index.Manifests))
	}
	var img imageOCI
	imageReadJSON(t, imageBlob(t, dir, index.Manifests[0]), &img.manifest)
	imageReadJSON(t, imageBlob(t, dir, img.manifest.Config), &img.config)
	return img
}

func imageBlob(t *testing.T, dir string, d imageDescriptor) string {
	t.Helper()
	alg, hexDigest, ok := strings.Cut(d.Digest, ":")
	if !ok || strings.ContainsAny(alg+hexDigest, `/\.`) {
		t.Fatalf("bad digest %q", d.Digest)
	}
	return filepath.Join(dir, "blobs", alg, hexDigest)
}

func imageReadJSON(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// imageCheckConfig checks what Kubernetes and registries read: a numeric
// non-root user (runAsNonRoot can only verify a number), the platform, the
// entrypoint and the OCI labels.
func imageCheckConfig(t *testing.T, c imageConfig, binary, version string) {
	t.Helper()
	uid, gid, err := imageUser(c.Config.User)
	if err != nil {
		t.Errorf("user %q: %v", c.Config.User, err)
	} else if uid == 0 || gid == 0 {
		t.Errorf("user %q: runs as root", c.Config.User)
	}
	if c.OS != "linux" || c.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", c.OS, c.Architecture, runtime.GOARCH)
	}
	if want := []string{"/usr/local/bin/" + binary}; !slices.Equal(c.Config.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", c.Config.Entrypoint, want)
	}
	for label, want := range map[string]string{
		"org.opencontainers.image.version":  version,
		"org.opencontainers.image.revision": imageRevision,
		"org.opencontainers.image.source":   imageSource,
		"org.opencontainers.image.title":    binary,
	} {
		if got := c.Config.Labels[label]; got != want {
			t.Errorf("label %s = %q, want %q", label, got, want)
		}
	}
}

// imageUser parses a numeric "uid[:gid]"; a name would need the image's
// passwd to resolve, which Kubernetes does not read.
func imageUser(user string) (uid, gid uint32, err error) {
	u, g, hasGroup := strings.Cut(user, ":")
	n, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("not a numeric uid")
	}
	uid, gid = uint32(n), uint32(n)
	if hasGroup {
		n, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("not a numeric gid")
		}
		gid = uint32(n)
	}
	return uid, gid, nil
}

// imageExtract unpacks the layers into rootfs and returns the size of the
// files and of the compressed layers. The images hold files and
// directories only: links are refused, so that nothing written here can
// land outside rootfs.
func imageExtract(t *testing.T, oci string, m imageManifest, rootfs string) (files, compressed int64) {
	t.Helper()
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, layer := range m.Layers {
		f, err := os.Open(imageBlob(t, oci, layer))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var r io.Reader = f
		switch layer.MediaType {
		case "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip":
			compressed += layer.Size
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("layer %s: %v", layer.Digest, err)
			}
			r = zr
		case "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar":
			// Registries get layers gzipped: measure that.
			n, err := imageGzipSize(f)
			if err != nil {
				t.Fatalf("layer %s: %v", layer.Digest, err)
			}
			compressed += n
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("layer %s: media type %s not handled", layer.Digest, layer.MediaType)
		}
		tr := tar.NewReader(r)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("layer %s: %v", layer.Digest, err)
			}
			name := path.Clean("/" + h.Name)
			if strings.HasPrefix(path.Base(name), ".wh.") {
				t.Fatalf("layer %s: whiteout %s; the images only add files", layer.Digest, name)
			}
			dst := filepath.Join(rootfs, filepath.FromSlash(name))
			switch h.Typeflag {
			case tar.TypeDir:
				if err := os.MkdirAll(dst, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dst, h.FileInfo().Mode().Perm()); err != nil {
					t.Fatal(err)
				}
			case tar.TypeReg:
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					t.Fatal(err)
				}
				out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, h.FileInfo().Mode().Perm())
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.Copy(out, tr)
				if cerr := out.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				files += n
			default:
				t.Fatalf("layer %s: %s is of tar type %q; the images hold files and directories only", layer.Digest, name, h.Typeflag)
			}
			if err := os.Lchown(dst, h.Uid, h.Gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return files, compressed
}

func imageGzipSize(r io.Reader) (int64, error) {
	var n imageCounter
	zw := gzip.NewWriter(&n)
	if _, err := io.Copy(zw, r); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return int64(n), nil
}

type imageCounter int64

func (c *imageCounter) Write(p []byte) (int, error) {
	*c += imageCounter(len(p))
	return len(p), nil
}

// imageCheckFilesystem checks what the binaries need from the image: CA
// roots for TLS and a passwd entry for the user; and that it carries no
// shell, which nothing needs.
func imageCheckFilesystem(t *testing.T, rootfs string, c imageConfig) {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil {
		t.Errorf("CA certificates: %v", err)
	} else if !bytes.Contains(ca, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Errorf("CA certificates: no PEM certificate in /etc/ssl/certs/ca-certificates.crt")
	}
	uid, _, err := imageUser(c.Config.User)
	if err == nil {
		passwd, err := os.ReadFile(filepath.Join(rootfs, "etc/passwd"))
		if err != nil {
			t.Errorf("passwd: %v", err)
		} else if !bytes.Contains(passwd, []byte(fmt.Sprintf(":x:%d:", uid))) {
			t.Errorf("/etc/passwd names no user %d:\n%s", uid, passwd)
		}
	}
	for _, sh := range []string{"bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"} {
		if _, err := os.Lstat(filepath.Join(rootfs, sh)); err == nil {
			t.Errorf("the image has /%s", sh)
		}
	}
}

// imageRunChroot runs the image's entrypoint with args in a chroot of its
// filesystem, as its user, with its environment: what a container runtime
// does, less the namespaces.
func imageRunChroot(t *testing.T, rootfs string, c imageConfig, args ...string) string {
	t.Helper()
	uid, gid, err := imageUser(c.Config.User)
	if err != nil {
		t.Fatalf("user %q: %v", c.Config.User, err)
	}
	// The image user must reach its files through the chroot's root, a
	// temporary directory only root may enter.
	if err := os.Chmod(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append(append(append([]string{}, c.Config.Entrypoint...), c.Config.Cmd...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = c.Config.Env
	cmd.Dir = "/"
	if c.Config.WorkingDir != "" {
		cmd.Dir = c.Config.WorkingDir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Chroot:     rootfs,
		Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s in a chroot of the image: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// imageCheckStatic checks that file is an ELF executable for machine with
// no interpreter and no dynamic section: it runs on an empty filesystem.
func imageCheckStatic(t *testing.T, file string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(file)
	if err != nil {
		t.Errorf("%s: %v", file, err)
		return
	}
	defer f.Close()
	if f.Machine != machine || f.Class != elf.ELFCLASS64 || f.Type != elf.ET_EXEC {
		t.Errorf("%s: %s %s %s, want %s %s %s", file, f.Class, f.Machine, f.Type, elf.ELFCLASS64, machine, elf.ET_EXEC)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s: has %s: dynamically linked", file, p.Type)
		}
	}
	if s := f.Section(".dynamic"); s != nil {
		t.Errorf("%s: has a .dynamic section: dynamically linked", file)
	}
}

// imageCheckBuildInfo checks how the Go toolchain says file was built: for
// linux/arch, without cgo, with -trimpath. (It leaves -ldflags out under
// -trimpath, so the stamped version is looked for in the bytes.)
func imageCheckBuildInfo(t *testing.T, file, arch string) {
	t.Helper()
	bi, err := buildinfo.ReadFile(file)
	if err != nil {
		t.Errorf("%s: %v", file, err)
		return
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{"GOOS": "linux", "GOARCH": arch, "CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[key] != want {
			t.Errorf("%s: built with %s=%q, want %q", file, key, settings[key], want)
		}
	}
}

func imageBuildID(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("go", "tool", "buildid", file).Output()
	if err != nil {
		t.Fatalf("go tool buildid %s: %v", file, err)
	}
	return strings.TrimSpace(string(out))
}

// imageMake runs make in the repository's root; the recipes' output is
// logged when they fail.
func imageMake(t *testing.T, root string, args ...string) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", root}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func imageRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Makefile")); err != nil {
		t.Fatalf("no Makefile in the repository's root: %v", err)
	}
	return root
}

// imageNeed fails under CI, where every tool is installed, when tool is
// not on PATH, and skips the test elsewhere.
func imageNeed(t *testing.T, tool string) {
	t.Helper()
	testenv.Tool(t, tool, "see the README's Deploying")
}

func imageRandom(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func imageMB(n int64) string {
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}
