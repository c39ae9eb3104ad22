package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction after line continuations are joined.
type instruction struct {
	line  int
	cmd   string // upper case: FROM, COPY, ...
	flags map[string]string
	args  []string
}

// parseDockerfile is a deliberately small parser for the subset of Dockerfile syntax our two files
// use: comments and parser directives, backslash continuations, `--flag=value` options and the
// JSON (exec) form. It rejects what it does not understand instead of guessing.
func parseDockerfile(src string) ([]instruction, error) {
	var out []instruction
	var cur strings.Builder
	start := 0
	lines := strings.Split(src, "\n")
	for i, raw := range lines {
		line := strings.TrimRight(raw, " \t\r")
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment lines inside a continuation are dropped, as by docker
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		ins, err := parseInstruction(strings.TrimSpace(cur.String()))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", start, err)
		}
		ins.line = start
		out = append(out, ins)
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation at end of file", start)
	}
	return out, nil
}

var knownInstructions = []string{"FROM", "RUN", "COPY", "ADD", "USER", "ENTRYPOINT", "CMD", "EXPOSE", "ENV", "ARG", "WORKDIR", "LABEL"}

func parseInstruction(s string) (instruction, error) {
	cmd, rest, _ := strings.Cut(s, " ")
	ins := instruction{cmd: strings.ToUpper(cmd), flags: map[string]string{}}
	if !slices.Contains(knownInstructions, ins.cmd) {
		return ins, fmt.Errorf("unknown instruction %q", cmd)
	}
	rest = strings.TrimSpace(rest)
	if ins.cmd == "RUN" {
		ins.args = []string{rest}
		return ins, nil
	}
	for strings.HasPrefix(rest, "--") {
		var opt string
		opt, rest, _ = strings.Cut(rest, " ")
		k, v, _ := strings.Cut(strings.TrimPrefix(opt, "--"), "=")
		ins.flags[k] = v
		rest = strings.TrimSpace(rest)
	}
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &ins.args); err != nil {
			return ins, fmt.Errorf("%s: exec form %s: %w", ins.cmd, rest, err)
		}
		return ins, nil
	}
	ins.args = strings.Fields(rest)
	return ins, nil
}

// imagesPlan is what `make images` would do, from `make -n`: for each image (the directory
// name under deploy/images), the binaries compiled into its build context and its tag.
type imagesPlan struct {
	binaries map[string][]string // image -> binary names
	tags     map[string]string   // image -> -t value
}

func makeImagesPlan(t *testing.T) imagesPlan {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	ctxDir := "/nonexistent/bin"
	cmd := exec.Command("make", "-n", "-f", "mk/deploy.mk", "BIN="+ctxDir, "GO=go", "DOCKER=docker", "images")
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n images: %v\n%s", err, out)
	}
	plan := imagesPlan{binaries: map[string][]string{}, tags: map[string]string{}}
	for _, image := range []string{"webhook", "memkind", "redis-debian"} {
		plan.binaries[image] = nil
	}
	build := regexp.MustCompile(`go build [^&]*?-o ` + regexp.QuoteMeta(ctxDir) + `/images/([^/ ]+)/(\S+) \./cmd/(\S+)`)
	for _, m := range build.FindAllStringSubmatch(string(out), -1) {
		if m[2] != m[3] {
			t.Errorf("make images builds ./cmd/%s as %s: the binary should keep its command's name", m[3], m[2])
		}
		plan.binaries[m[1]] = append(plan.binaries[m[1]], m[2])
	}
	dockerBuild := regexp.MustCompile(`docker build .*-f deploy/images/(\S+)/Dockerfile -t (\S+) ` + regexp.QuoteMeta(ctxDir) + `/images/(\S+)`)
	for _, m := range dockerBuild.FindAllStringSubmatch(string(out), -1) {
		if m[1] != m[3] {
			t.Errorf("make images builds deploy/images/%s/Dockerfile with the context of image %s", m[1], m[3])
		}
		plan.tags[m[1]] = m[2]
	}
	if len(plan.tags) == 0 || len(plan.binaries["webhook"]) == 0 {
		t.Fatalf("could not find go build / docker build commands in `make -n images`:\n%s", out)
	}
	return plan
}

// The images were not built here (no Docker daemon); this checks what can be checked without one:
// the Dockerfiles parse, every file they copy from the build context is a binary `make images`
// compiles from an existing ./cmd/ package, and entrypoints, users and tags match the manifests.
func TestDockerfiles(t *testing.T) {
	plan := makeImagesPlan(t)
	dirs, err := os.ReadDir("images")
	if err != nil {
		t.Fatal(err)
	}
	var images []string
	for _, d := range dirs {
		images = append(images, d.Name())
	}
	if !slices.Equal(images, sortedKeys(plan.tags)) {
		t.Errorf("deploy/images has %v, make images builds %v", images, sortedKeys(plan.tags))
	}

	entrypoints := map[string][]string{}
	for _, image := range images {
		t.Run(image, func(t *testing.T) {
			src, err := os.ReadFile(filepath.Join("images", image, "Dockerfile"))
			if err != nil {
				t.Fatal(err)
			}
			ins, err := parseDockerfile(string(src))
			if err != nil {
				t.Fatalf("parse deploy/images/%s/Dockerfile: %v", image, err)
			}
			if len(ins) == 0 || ins[0].cmd != "FROM" {
				t.Fatalf("first instruction must be FROM")
			}
			stages := map[string]bool{}
			var copied []string
			var user string
			var entrypoint []string
			for _, in := range ins {
				switch in.cmd {
				case "FROM":
					ref := in.args[0]
					if name, _, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], "@"); !strings.Contains(name, ":") || strings.HasSuffix(name, ":latest") {
						t.Errorf("line %d: base image %q: pin a tag (not latest)", in.line, ref)
					}
					if len(in.args) == 3 && strings.EqualFold(in.args[1], "AS") {
						stages[in.args[2]] = true
					}
					user, entrypoint = "", nil // a new stage starts from its base image's settings
				case "COPY", "ADD":
					if in.cmd == "ADD" {
						t.Errorf("line %d: use COPY (ADD fetches URLs and unpacks archives)", in.line)
					}
					if from, ok := in.flags["from"]; ok {
						if !stages[from] {
							t.Errorf("line %d: COPY --from=%s: no earlier stage of that name", in.line, from)
						}
						continue
					}
					if _, ok := in.flags["chmod"]; ok && !strings.HasPrefix(string(src), "# syntax=docker/dockerfile:1") {
						t.Errorf("line %d: COPY --chmod needs the BuildKit frontend: start the file with # syntax=docker/dockerfile:1", in.line)
					}
					copied = append(copied, in.args[:len(in.args)-1]...)
				case "USER":
					user = in.args[0]
				case "ENTRYPOINT":
					entrypoint = in.args
				}
			}
			switch {
			case len(plan.binaries[image]) > 0 && user != "65532:65532":
				// Our own images: the manifests run them as 65532 with runAsNonRoot.
				t.Errorf("final stage USER %q, want 65532:65532 (numeric, so runAsNonRoot can verify it)", user)
			case user == "" || user == "root" || strings.HasPrefix(user, "0"):
				t.Errorf("final stage USER %q: the image must not run as root", user)
			}
			entrypoints[image] = entrypoint

			slices.Sort(copied)
			built := slices.Clone(plan.binaries[image])
			slices.Sort(built)
			if !slices.Equal(copied, built) {
				t.Errorf("Dockerfile copies %v from its build context, make images compiles %v into it", copied, built)
			}
			for _, b := range built {
				if st, err := os.Stat(filepath.Join("..", "cmd", b)); err != nil || !st.IsDir() {
					t.Errorf("make images compiles ./cmd/%s, which does not exist", b)
				}
			}
		})
	}

	// The manifests run what the images contain, under the tags make images produces.
	m, err := RenderDefault()
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, m)
	c := r.deployment.Spec.Template.Spec.Containers[0]
	if c.Image != plan.tags["webhook"] {
		t.Errorf("Deployment image %q, make images tags %q", c.Image, plan.tags["webhook"])
	}
	if !slices.Equal(c.Command, entrypoints["webhook"]) {
		t.Errorf("Deployment command %v, webhook image ENTRYPOINT %v", c.Command, entrypoints["webhook"])
	}
	if !slices.Contains(c.Args, "--memkind-image="+plan.tags["memkind"]) {
		t.Errorf("Deployment args %v do not name the memkind image make images tags (%s)", c.Args, plan.tags["memkind"])
	}
	for _, ex := range []string{"examples/redis-pmem.yaml", "examples/redis-dram.yaml"} {
		b, err := files.ReadFile(ex)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "image: "+plan.tags["redis-debian"]+"\n") {
			t.Errorf("%s does not run the image make images tags %q", ex, plan.tags["redis-debian"])
		}
	}
	// The image runs as a non-root uid; on a root-owned fresh PMEM volume its
	// heap stays on DRAM unless the pod's fsGroup lets it create its file.
	dockerfile, err := os.ReadFile(filepath.Join("images", "redis-debian", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	user := regexp.MustCompile(`(?m)^USER (\d+)(?::(\d+))?$`).FindStringSubmatch(string(dockerfile))
	if user == nil {
		t.Fatal("images/redis-debian/Dockerfile has no numeric USER line")
	}
	group := user[1]
	if user[2] != "" {
		group = user[2]
	}
	for _, ex := range []string{"examples/redis-pmem.yaml", "examples/redis-dram.yaml"} {
		b, err := files.ReadFile(ex)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "securityContext: {fsGroup: "+group+"}") {
			t.Errorf("%s: the image runs as %s but the pod sets no securityContext.fsGroup %s: its heap would stay on DRAM on a root-owned PMEM volume", ex, user[0], group)
		}
	}
	// The contract: the injected init container runs /usr/local/bin/pmem-memkind-init.
	if !slices.Equal(entrypoints["memkind"], []string{"/usr/local/bin/pmem-memkind-init"}) {
		t.Errorf("memkind image ENTRYPOINT %v, want [/usr/local/bin/pmem-memkind-init]", entrypoints["memkind"])
	}
}

func sortedKeys[V any](m map[string]V) []string { return keys(m) }

func TestParseDockerfile(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []instruction
		wantErr   string
	}{
		{
			name: "continuations, flags, exec form",
			src:  "# syntax=docker/dockerfile:1\nFROM a:1 AS s\nRUN x \\\n # note\n && y\nCOPY --from=s --chmod=0555 /p /q\nENTRYPOINT [\"/b\", \"c\"]\n",
			want: []instruction{
				{line: 2, cmd: "FROM", flags: map[string]string{}, args: []string{"a:1", "AS", "s"}},
				{line: 3, cmd: "RUN", flags: map[string]string{}, args: []string{"x   && y"}},
				{line: 6, cmd: "COPY", flags: map[string]string{"from": "s", "chmod": "0555"}, args: []string{"/p", "/q"}},
				{line: 7, cmd: "ENTRYPOINT", flags: map[string]string{}, args: []string{"/b", "c"}},
			},
		},
		{name: "unknown instruction", src: "FROM a:1\nONBUILD RUN x\n", wantErr: "line 2: unknown instruction"},
		{name: "bad exec form", src: "FROM a:1\nCMD [\"x\"\n", wantErr: "line 2: CMD: exec form"},
		{name: "dangling continuation", src: "FROM a:1\nRUN x \\", wantErr: "continuation at end of file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDockerfile(tc.src)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalJSON(t, fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", tc.want)) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
